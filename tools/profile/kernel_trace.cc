// A CUDA injection library that sums GPU kernel time by kernel name for any CUDA process (here: xlstm-onnx, which has
// no profiler of its own on the GPU), through CUPTI's activity API. Build and use on the GPU machine:
//
//   g++ -O2 -shared -fPIC -DKERNEL_RECORD=CUpti_ActivityKernel9 -I$CUDA/include -I$CUDA/extras/CUPTI/include \
//       tools/profile/kernel_trace.cc -o /tmp/libkernel_trace.so -L$CUDA/extras/CUPTI/lib64 -lcupti
//   CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=trace.tsv xlstm-onnx bench ...
//
// (tools/profile/build.sh tries the kernel record versions this CUPTI has.) Output, at exit: one line per kernel name,
// "count<TAB>total_ns<TAB>name", largest first. Kernels replayed from CUDA graphs are included.
//
// With KERNEL_TRACE_STEPS=steps.tsv it also cuts the timeline into steps (a new step starts where the GPU was idle
// for more than KERNEL_TRACE_GAP_US, default 100 µs: between a server's decode steps the host reads the tokens) and
// sums kernel time by step kind: "mixed" when a step ran a chunkwise kernel (a prompt rode it), else "plain". Lines:
// "kind<TAB>steps<TAB>count<TAB>total_ns<TAB>name", and per kind a line "<kind>/span" whose total_ns sums each step's
// first start to last end and "<kind>/busy" the time at least one kernel ran (overlapping streams counted once).
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

/// One kernel run, for KERNEL_TRACE_STEPS: its interval and the index of its name in g_names.
struct Run {
  uint64_t start, end;
  uint32_t name;
};
std::vector<Run>* g_runs = nullptr;                 // null unless KERNEL_TRACE_STEPS is set
std::map<std::string, uint32_t>* g_name_ids = nullptr;
std::vector<std::string>* g_names = nullptr;
constexpr size_t kMaxRuns = 20u << 20;              // 20 M runs, 480 MB: a longer trace keeps its first part

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
    const char* name = k->name ? k->name : "?";
    Sum& s = (*g_sums)[name];
    s.count += 1;
    s.ns += k->end - k->start;
    if (g_runs != nullptr && g_runs->size() < kMaxRuns) {
      auto [it, added] = g_name_ids->emplace(name, static_cast<uint32_t>(g_names->size()));
      if (added) g_names->push_back(name);
      g_runs->push_back({static_cast<uint64_t>(k->start), static_cast<uint64_t>(k->end), it->second});
    }
  }
  std::free(buffer);
}

/// KERNEL_TRACE_STEPS: kernel time by step kind (see the header).
void ReportSteps(const char* path) {
  FILE* f = std::fopen(path, "w");
  if (!f) return;
  std::vector<Run>& runs = *g_runs;
  std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.start < b.start; });
  const char* gap_env = std::getenv("KERNEL_TRACE_GAP_US");
  const uint64_t gap = static_cast<uint64_t>(gap_env ? std::atof(gap_env) * 1000.0 : 100000.0);
  std::vector<bool> chunkwise(g_names->size());
  for (size_t i = 0; i < g_names->size(); ++i) chunkwise[i] = (*g_names)[i].find("Chunkwise") != std::string::npos;
  std::map<std::pair<std::string, uint32_t>, Sum> by_kind;  // (kind, name) -> sum
  std::map<std::string, Sum> steps, span, busy;            // kind -> steps (count), span, busy time
  size_t begin = 0;
  while (begin < runs.size()) {
    size_t end = begin + 1;
    uint64_t last = runs[begin].end;
    while (end < runs.size() && runs[end].start <= last + gap) last = std::max(last, runs[end++].end);
    bool mixed = false;
    for (size_t i = begin; i < end; ++i) mixed = mixed || chunkwise[runs[i].name];
    const std::string kind = mixed ? "mixed" : "plain";
    uint64_t covered = 0, reach = runs[begin].start;
    for (size_t i = begin; i < end; ++i) {
      Sum& s = by_kind[{kind, runs[i].name}];
      s.count += 1;
      s.ns += runs[i].end - runs[i].start;
      if (runs[i].end > reach) {
        covered += runs[i].end - std::max(reach, runs[i].start);
        reach = runs[i].end;
      }
    }
    steps[kind].count += 1;
    span[kind].ns += last - runs[begin].start;
    busy[kind].ns += covered;
    begin = end;
  }
  std::fprintf(f, "kind\tsteps\tcount\ttotal_ns\tname\n");
  for (const auto& [kind, n] : steps) {
    std::fprintf(f, "%s\t%llu\t%llu\t%llu\t%s/span\n", kind.c_str(), (unsigned long long)n.count, (unsigned long long)n.count,
                 (unsigned long long)span[kind].ns, kind.c_str());
    std::fprintf(f, "%s\t%llu\t%llu\t%llu\t%s/busy\n", kind.c_str(), (unsigned long long)n.count, (unsigned long long)n.count,
                 (unsigned long long)busy[kind].ns, kind.c_str());
  }
  std::vector<std::pair<std::pair<std::string, uint32_t>, Sum>> rows(by_kind.begin(), by_kind.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  for (const auto& [key, s] : rows) {
    std::fprintf(f, "%s\t%llu\t%llu\t%llu\t%s\n", key.first.c_str(), (unsigned long long)steps[key.first].count,
                 (unsigned long long)s.count, (unsigned long long)s.ns, (*g_names)[key.second].c_str());
  }
  std::fclose(f);
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
  if (const char* steps = std::getenv("KERNEL_TRACE_STEPS"); steps != nullptr && g_runs != nullptr) ReportSteps(steps);
}

}  // namespace

extern "C" int InitializeInjection() {
  g_sums = new std::map<std::string, Sum>();
  if (std::getenv("KERNEL_TRACE_STEPS") != nullptr) {
    g_runs = new std::vector<Run>();
    g_runs->reserve(1u << 20);
    g_name_ids = new std::map<std::string, uint32_t>();
    g_names = new std::vector<std::string>();
  }
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS) return 0;
  if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) return 0;
  std::atexit(Report);
  return 1;
}
