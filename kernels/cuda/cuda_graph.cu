// cuda_graph: step graphs for the CUDA backend — stream capture of a step's ops into a cudaGraph, instantiated
// once per key and replayed with one cudaGraphLaunch (backend.h, "step graphs").
//
// Why: a Qwen2-7B decode step is ~28 layers x ~14 kernels + the cuBLASLt GEMMs, about 400 launches; at ~3-5 us
// of launch overhead each that is 1.2-2 ms of CPU time per token against a 3.3-4.7 ms weight-streaming floor,
// and the GPU idles between launches whenever the CPU falls behind. One graph launch costs ~10 us.
//
// Capture mode: cudaStreamCaptureModeThreadLocal — only this thread's unsafe calls (cudaMalloc, synchronous
// copies) are refused while capturing; other threads (the HTTP server's, the upload copies) are unaffected.
// Because the mode is not Relaxed, cudaStreamEndCapture must come from the thread that began the capture (CUDA
// Runtime API, cudaStreamBeginCapture): graph_begin, the recorded ops and graph_end all run on the engine thread
// (backend.h: one driving thread), and graph_abort is called on it too.
// What each op may call while capturing (checked op by op for decoder_forward, qwen2audio.c): kernel launches
// and cublasLtMatmul on cb->stream (cuBLASLt's descriptor/heuristic calls are host-only), cudaGetLastError,
// cudaSetDevice; never cudaMalloc/cudaFree, synchronous copies or memsets, stream/event synchronisation,
// cudaStreamWaitEvent on an event recorded outside the capture, or cudaFuncSetAttribute (the flash kernels' limits
// are raised at create; the simple attention kernel, which raises its own, is not recorded: graph_unsafe).
// What may be recorded is the backend's ops: kernels and cuBLASLt matmuls on cb->stream. cuBLASLt plans are
// created by the warm-up step the model runs eagerly before the first recording of a key (qwen2audio.c), and
// its workspace is the fixed cb->lt_ws, so a recorded matmul never allocates.
//
// Supported only with bf16 and the fast attention: the simple attention kernel sizes its shared memory from
// the step's longest context (a host value), which a replay could not follow.
//
// ref: CUDA C++ Programming Guide, "CUDA Graphs" (stream capture, cudaGraphInstantiate, cudaGraphLaunch).
#include <stdlib.h>
#include <string.h>

#include "attn_fast.h"
#include "cuda_backend.h"
#include "cuda_check.h"
#include "cuda_common.cuh"
#include "cuda_hooks.h"

// ---- the programmatic-dependent-launch probe ----

// x = 10·x + add, only where pdl_begin() is compiled in (sm_90 code): a binary that runs on the card from older
// code (built for sm_80 only, JIT-compiled) has kernels without the wait, must not use PDL, and makes the probe
// fail. Started as the per-step kernels start (pdl_begin: wait, then let the next kernel be scheduled), and the
// first kernel sleeps ~50 µs before its write, so a second kernel that did not wait would see x unwritten and
// the order-dependent result would differ.
__global__ void pdl_probe_kernel(int *x, int add) {
  pdl_begin();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    if (add == 1)
      for (int i = 0; i < 50; i++) __nanosleep(1000);
    *x = *x * 10 + add;
  }
#else
  (void)x, (void)add;
#endif
}

// Both launches and the graph, on a private stream: x goes 0 -> 1 -> 12 (direct), then 121 -> 1212 (replayed).
static bool pdl_probe_run(cudaStream_t s, int *d) {
  cudaGraph_t g = NULL;
  cudaGraphExec_t exec = NULL;
  int h = 0;
  bool ok = cudaMemsetAsync(d, 0, sizeof(int), s) == cudaSuccess;
  if (ok) {
    cuda_launch_on(s, 1, pdl_probe_kernel, dim3(1), dim3(32), 0, d, 1);
    cuda_launch_on(s, 1, pdl_probe_kernel, dim3(1), dim3(32), 0, d, 2);
    ok = cudaGetLastError() == cudaSuccess;
  }
  ok = ok && cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (ok) {
    cuda_launch_on(s, 1, pdl_probe_kernel, dim3(1), dim3(32), 0, d, 1);
    cuda_launch_on(s, 1, pdl_probe_kernel, dim3(1), dim3(32), 0, d, 2);
    const bool launched = cudaGetLastError() == cudaSuccess;
    ok = cudaStreamEndCapture(s, &g) == cudaSuccess && g && launched;
  }
  ok = ok && cudaGraphInstantiate(&exec, g, 0) == cudaSuccess && cudaGraphLaunch(exec, s) == cudaSuccess &&
       cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess &&
       cudaStreamSynchronize(s) == cudaSuccess && h == 1212;
  if (exec) cudaGraphExecDestroy(exec);
  if (g) cudaGraphDestroy(g);
  return ok;
}

extern "C" int cuda_pdl_probe(void) {
  cudaStream_t s = NULL;
  int *d = NULL;
  bool ok = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
            cudaMalloc((void **)&d, sizeof(int)) == cudaSuccess && pdl_probe_run(s, d);
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (s && cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = NULL;
    if (cudaStreamEndCapture(s, &g) == cudaSuccess && g) cudaGraphDestroy(g);
  }
  if (s) cudaStreamSynchronize(s);
  if (d) cudaFree(d);
  if (s) cudaStreamDestroy(s);
  cudaGetLastError(); // a refused probe leaves nothing for the next call
  return ok;
}

extern "C" int cuda_graphs_supported(const es_backend_t *be) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  return ATTN_DECODE_GRAPH_SAFE && !cb->graphs_off && be->act_dtype == ES_DT_BF16 && cb->attn_path == CUDA_ATTN_FAST;
}

extern "C" int cuda_graph_begin(es_backend_t *be, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  // an error left by an earlier call would be reported by the first launch check inside the capture
  ES_CUDA_TRY(err, cudaGetLastError());
  ES_CUDA_TRY(err, cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal));
  cb->graph_unsafe = NULL;
  return ES_OK;
}

extern "C" void cuda_graph_abort(es_backend_t *be) {
  cuda_backend_t *cb = cuda_be(be);
  cb->graph_unsafe = NULL;
  cudaGraph_t g = NULL;
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(cb->stream, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
    if (cudaStreamEndCapture(cb->stream, &g) == cudaSuccess && g) cudaGraphDestroy(g);
  }
  cudaGetLastError(); // an invalidated capture leaves an error; the next op must not see it
}

// A recording that cannot be completed (capture invalidated, instantiation refused) is not a device fault: graphs
// are switched off for this backend and ES_EUNSUPPORTED tells the model to run the step op by op (nothing of
// the recorded step has run). A sticky error would show up again at the next call and mark the backend then.
static int graph_refused(cuda_backend_t *cb, cudaError_t e, const char *call, es_error_t *err) {
  cudaGetLastError();
  cb->graphs_off = 1;
  return es_fail(err, ES_EUNSUPPORTED, "%s: %s failed (%s); step graphs switched off", cb->base.name, call,
                 cudaGetErrorName(e));
}

extern "C" int cuda_graph_end(es_backend_t *be, int key, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(cb->stream, &g);
  if (e != cudaSuccess || !g) {
    if (g) cudaGraphDestroy(g);
    return graph_refused(cb, e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture", err);
  }
  if (cb->graph_unsafe) { // an op recorded a launch a replay could not follow (cuda_backend.h, graph_unsafe)
    cudaGraphDestroy(g);
    const char *why = cb->graph_unsafe;
    cb->graph_unsafe = NULL;
    cb->graphs_off = 1;
    return es_fail(err, ES_EUNSUPPORTED, "%s: step graph not kept: it would replay %s; step graphs switched off",
                   cb->base.name, why);
  }
  cudaGraphExec_t exec = NULL;
  e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g); // the executable graph keeps what it needs
  if (e != cudaSuccess) return graph_refused(cb, e, "cudaGraphInstantiate", err);
  if (cb->graphs[key]) cudaGraphExecDestroy(cb->graphs[key]);
  cb->graphs[key] = exec;
  return ES_OK;
}

extern "C" int cuda_graph_has(const es_backend_t *be, int key) {
  return ((const cuda_backend_t *)be)->graphs[key] != NULL;
}

extern "C" int cuda_graph_launch(es_backend_t *be, int key, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  ES_CUDA_TRY(err, cudaGraphLaunch(cb->graphs[key], cb->stream));
  return ES_OK;
}

extern "C" void cuda_graphs_free(cuda_backend_t *cb) {
  int any = 0;
  for (int k = 0; k < ES_GRAPH_MAX_KEYS; k++) any |= cb->graphs[k] != NULL;
  if (!any) return;
  // a replay may still run on the stream: let it finish before its executable graph goes (never called while
  // capturing: the callers refuse, and destroy ends a capture first)
  if (cb->stream) cudaStreamSynchronize(cb->stream);
  for (int k = 0; k < ES_GRAPH_MAX_KEYS; k++) {
    if (cb->graphs[k]) cudaGraphExecDestroy(cb->graphs[k]);
    cb->graphs[k] = NULL;
  }
}

extern "C" cuda_backend_t *cuda_hook_backend(es_backend_t *be, const char *what, es_error_t *err) {
  if (!be || strcmp(be->ops->kind, "cuda") != 0) {
    es_fail(err, ES_EINVAL, "%s: %s is not the CUDA backend", what, be ? be->name : "(null)");
    return NULL;
  }
  return cuda_be(be);
}

extern "C" int cuda_hook_change(cuda_backend_t *cb, const char *what, int changed, es_error_t *err) {
  if (cb->base.recording) return es_fail(err, ES_EINTERNAL, "%s: changed while recording a step graph", what);
  if (changed) cuda_graphs_free(cb);
  return ES_OK;
}

extern "C" int cuda_backend_set_pdl(es_backend_t *be, int on, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "programmatic dependent launch", err);
  if (!cb) return ES_EINVAL;
  const int want = on && cb->pdl_ok;
  int rc = cuda_hook_change(cb, "programmatic dependent launch", cb->pdl != want, err); // recorded launches differ
  if (rc) return rc;
  cb->pdl = want;
  return ES_OK;
}

extern "C" int cuda_backend_pdl(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->pdl : 0;
}

extern "C" int cuda_backend_set_graphs(es_backend_t *be, int on, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "step graphs", err);
  if (!cb) return ES_EINVAL;
  int rc = cuda_hook_change(cb, "step graphs", 0, err); // graphs kept: replayed again once back on
  if (rc) return rc;
  cb->graphs_off = !on;
  return ES_OK;
}
