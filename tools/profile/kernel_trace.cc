// A CUDA injection library that sums GPU kernel time by kernel name for any CUDA process (here: xlstm-onnx, which has
// no profiler of its own on the GPU), through CUPTI's activity API. Build and use on the GPU machine:
//
//   g++ -O2 -shared -fPIC -DKERNEL_RECORD=CUpti_ActivityKernel9 -I$CUDA/include -I$CUDA/extras/CUPTI/include \
//       tools/profile/kernel_trace.cc -o /tmp/libkernel_trace.so -L$CUDA/extras/CUPTI/lib64 -lcupti
//   CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=trace.tsv xlstm-onnx bench ...
//
// (tools/profile/build.sh tries the kernel record versions this CUPTI has.) Output, at exit: one line per kernel name,
// "count<TAB>total_ns<TAB>name", largest first. Kernels replayed from CUDA graphs are included.
#include <cupti.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Sum {
  uint64_t count = 0;
  uint64_t ns = 0;
};

std::mutex g_mutex;
std::map<std::string, Sum>* g_sums = nullptr;  // leaked on purpose: written from CUPTI's thread until exit

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  constexpr size_t kBytes = 8u << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBytes));
  *size = kBytes;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const KERNEL_RECORD*>(record);
    Sum& s = (*g_sums)[k->name ? k->name : "?"];
    s.count += 1;
    s.ns += k->end - k->start;
  }
  std::free(buffer);
}

void Report() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const char* path = std::getenv("KERNEL_TRACE_OUT");
  FILE* f = path ? std::fopen(path, "w") : stderr;
  if (!f) return;
  std::vector<std::pair<std::string, Sum>> rows(g_sums->begin(), g_sums->end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  std::fprintf(f, "count\ttotal_ns\tname\n");
  for (const auto& [name, s] : rows) std::fprintf(f, "%llu\t%llu\t%s\n", (unsigned long long)s.count, (unsigned long long)s.ns, name.c_str());
  if (f != stderr) std::fclose(f);
}

}  // namespace

extern "C" int InitializeInjection() {
  g_sums = new std::map<std::string, Sum>();
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS) return 0;
  if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) return 0;
  std::atexit(Report);
  return 1;
}
