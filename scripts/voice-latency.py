#!/usr/bin/env python3
"""Voice-chat latency of `earshot serve` (GET /v1/realtime): what a person talking to it waits for.

usage: scripts/voice-latency.py --url ws://127.0.0.1:8080/v1/realtime [--api-key KEY] --audio speech.wav
                                [--turns 3] [--speed 1.0] [--silence-ms 500] [--max-output-tokens 64] [--json]

Plays a 16-bit mono PCM WAV file into one session as a microphone would (20 ms chunks at --speed times real
time; 0 = as fast as possible), followed by 1.5 s of silence, --turns times, in one conversation; server VAD
finds each turn. For each turn it measures, from the moment the file's last chunk was sent (the file should end
where the speech ends), with a reader thread stamping events as they arrive:
  stop_ms   until input_audio_buffer.speech_stopped (includes the VAD's silence_duration: --silence-ms)
  first_ms  until the first response.output_text.delta (what the listener waits for)
  done_ms   until response.done
and prints a table (or --json). Only the Python standard library and `websockets` are needed (build/test-venv
has both: scripts/test-venv.sh). Times on this 2-core CPU machine are noise; run it against a GPU server.
"""
import argparse
import base64
import json
import queue
import struct
import sys
import threading
import time

from websockets.sync.client import connect


def read_wav(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        sys.exit("%s: not a WAV file" % path)
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif tag == b"data":
            pcm = body
        pos += 8 + size + (size & 1)
    if not fmt or pcm is None or fmt[0] != 1 or fmt[1] != 1 or fmt[5] != 16:
        sys.exit("%s: need 16-bit PCM mono (convert: ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav)" % path)
    return fmt[2], pcm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--audio", required=True)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--silence-ms", type=int, default=500)
    ap.add_argument("--max-output-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.turns < 1 or a.speed < 0 or a.silence_ms < 10 or a.max_output_tokens < 1:
        sys.exit("voice-latency: --turns >= 1, --speed >= 0, --silence-ms >= 10, --max-output-tokens >= 1")
    rate, pcm = read_wav(a.audio)
    chunk = rate // 50 * 2  # 20 ms of 16-bit samples
    headers = {"Authorization": "Bearer " + a.api_key} if a.api_key else {}
    results = []
    with connect(a.url, additional_headers=headers, max_size=None) as ws:
        ev = json.loads(ws.recv())
        if ev.get("type") != "session.created":
            sys.exit("voice-latency: expected session.created, got %s" % ev)
        ws.send(json.dumps({"type": "session.update", "session": {
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": {
                "type": "server_vad", "silence_duration_ms": a.silence_ms, "create_response": True}}},
            "max_output_tokens": a.max_output_tokens}}))
        events = queue.Queue()  # (arrival time, event): a reader thread stamps events as they arrive

        def reader():
            try:
                while True:
                    raw = ws.recv()
                    events.put((time.monotonic(), json.loads(raw)))
            except Exception:  # noqa: BLE001 - the connection ended
                events.put((time.monotonic(), None))

        threading.Thread(target=reader, daemon=True).start()
        for turn in range(a.turns):
            t_start = time.monotonic()
            stream = pcm + bytes(rate * 3)  # the speech, then 1.5 s of silence
            t_speech_end = None
            for off in range(0, len(stream), chunk):
                if a.speed > 0:  # pace like a microphone
                    due = t_start + (off / 2 / rate) / a.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                ws.send(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(stream[off : off + chunk]).decode()}))
                if off + chunk >= len(pcm) and t_speech_end is None:
                    t_speech_end = time.monotonic()
            r = {"turn": turn + 1}
            while "done_ms" not in r:
                at, ev = events.get(timeout=300)
                if ev is None:
                    sys.exit("voice-latency: the connection ended")
                now = (at - t_speech_end) * 1000
                t = ev.get("type")
                if t == "error":
                    sys.exit("voice-latency: error event: %s" % ev["error"])
                if t == "input_audio_buffer.speech_stopped" and "stop_ms" not in r:
                    r["stop_ms"] = now
                elif t == "response.output_text.delta" and "first_ms" not in r:
                    r["first_ms"] = now
                elif t == "response.done":
                    r["done_ms"] = now
                    u = ev["response"].get("usage") or {}
                    r["status"] = ev["response"]["status"]
                    r["input_tokens"] = u.get("input_tokens")
                    r["output_tokens"] = u.get("output_tokens")
            results.append(r)
    if a.json:
        print(json.dumps({"audio": a.audio, "rate": rate, "speed": a.speed, "turns": results}))
        return
    print("turn  speech_stopped  first text  done      in/out tokens  status")
    for r in results:
        print("%4d  %11.0f ms  %7.0f ms  %6.0f ms  %5s/%-7s  %s" % (
            r["turn"], r.get("stop_ms", -1), r.get("first_ms", -1), r["done_ms"], r.get("input_tokens"),
            r.get("output_tokens"), r["status"]))
    print("(ms after the last chunk of speech was sent; stop includes the %d ms of silence the VAD waits for)"
          % a.silence_ms)


if __name__ == "__main__":
    main()
