// libxlstm_customops: the mLSTM custom ops of XLstmOnnx for ONNX Runtime (domain "ai.xlstm", version 1).
// Load it with SessionOptions.RegisterCustomOpLibrary(path) (C#) or OrtApi::RegisterCustomOpsLibrary; ONNX Runtime
// then calls RegisterCustomOps, the library's only exported symbol.
#pragma once

#include "onnxruntime_c_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Adds the "ai.xlstm" domain (MLstmChunkwise, MLstmStep; CPU and, when built with CUDA, CUDA kernels) to `options`.
ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api);

#ifdef __cplusplus
}
#endif
