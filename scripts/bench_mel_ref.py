#!/usr/bin/env python3
"""Reference timings for `earshot bench mel`: transformers' WhisperFeatureExtractor on one thread.

Decodes FILE exactly as earshot does (`ffmpeg -nostdin -i FILE -ac 1 -ar 16000 -f f32le -`), keeps the
first 30 s, then times the extractor called the way Qwen2AudioProcessor calls it (padding="max_length",
truncation, return_attention_mask) on its torch path and on its numpy path (the one transformers takes when
torch is missing; forced here by patching is_torch_available in the module). Prints one JSON line with the
median milliseconds of each and of the ffmpeg CLI decode.
"""
import json
import os
import subprocess
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # before numpy/torch load their BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import transformers.models.whisper.feature_extraction_whisper as fw  # noqa: E402
from transformers import WhisperFeatureExtractor  # noqa: E402


def decode(path):
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-ac", "1", "-ar", "16000", "-f", "f32le",
                          "-"], check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype="<f4")


def median_ms(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def main():
    path, repeats = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20
    torch.set_num_threads(1)
    x = decode(path)[:480000]
    fe = WhisperFeatureExtractor(feature_size=128)  # Qwen2-Audio's preprocessor_config: 128 mel bins

    def call():
        return fe(x, sampling_rate=16000, padding="max_length", truncation=True, return_attention_mask=True,
                  return_tensors="np")

    orig = fw.is_torch_available
    fw.is_torch_available = lambda: True
    torch_ms = median_ms(call, repeats)
    fw.is_torch_available = lambda: False
    numpy_ms = median_ms(call, max(3, repeats // 4))
    fw.is_torch_available = orig
    decode_ms = median_ms(lambda: decode(path), max(3, repeats // 4))
    print(json.dumps({"torch_ms": torch_ms, "numpy_ms": numpy_ms, "ffmpeg_cli_decode_ms": decode_ms,
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "numpy": np.__version__, "threads": 1}))


if __name__ == "__main__":
    main()
