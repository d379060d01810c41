/* test_server: `earshot serve` end to end on the bundled tiny checkpoint (tiny-a, CPU), started by the test on
 * a free loopback port (--port 0; the port is read from its log).
 *   - every route with curl, and with the official `openai` Python client (build/test-venv, made by
 *     scripts/test-venv.sh; a missing venv fails the test);
 *   - greedy output over HTTP (chat with input_audio and with an audio_url data: URL, streamed and not; the
 *     multipart route with two files; transcriptions) equals `earshot run --json` for the same input;
 *   - every error class: 400 (JSON, field, base64, remote URL, n, context), 401, 404, 405, 413 (body, audio),
 *     415, 429 with Retry-After (a second server with a one-slot queue);
 *   - a client that disconnects mid-stream: its request is cancelled and its KV blocks are free again (engine
 *     statistics, through /metrics); SSE keep-alive comments reach a queued stream;
 *   - 16 concurrent streams all complete with the greedy text; the server is still healthy afterwards;
 *   - SIGTERM with a stream in flight: the stream ends with [DONE] and the server exits 0, in bounded time.
 * argv: EARSHOT SCRATCH_DIR
 */
#define _GNU_SOURCE /* strcasestr, strndup */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "es_clock.h"
#include "golden.h"
#include "npy.h"
#include "test_util.h"

#include "serve_proc.h"

#define AUTH "-H 'Authorization: Bearer " KEY "' "

/* Writes a chat request with audio parts (input_audio or audio_url, one per file) and a text part to path. */
static void write_chat(const char *path, const char *const *audio, int n_audio, const char *kind, const char *text,
                       const char *extra) {
  FILE *f = fopen(path, "wb");
  if (!f) return;
  fprintf(f, "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":[");
  for (int k = 0; k < n_audio; k++) {
    size_t n = 0;
    char *bytes = slurp(audio[k], &n);
    char *enc = bytes ? b64((const unsigned char *)bytes, n) : NULL;
    if (!strcmp(kind, "input_audio"))
      fprintf(f, "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"%s\",\"format\":\"ogg\"}},", enc);
    else
      fprintf(f, "{\"type\":\"audio_url\",\"audio_url\":{\"url\":\"data:audio/ogg;base64,%s\"}},", enc);
    free(bytes);
    free(enc);
  }
  fprintf(f,
          "{\"type\":\"text\",\"text\":\"%s\"}]}],\"temperature\":0,\"repetition_penalty\":1,"
          "\"max_tokens\":20,\"ignore_eos\":true%s}",
          text, extra);
  fclose(f);
}

/* Parses an SSE body: the concatenated delta contents, the number of data frames, whether it ended with [DONE],
 * whether the role chunk came first and the last finish_reason; *usage gets completion_tokens of a usage chunk. */
typedef struct {
  char text[1 << 15];
  int frames, done, role_first, usage, comments;
  char finish[32];
} sse_t;

static void parse_sse(const char *body, sse_t *o) {
  memset(o, 0, sizeof *o);
  o->usage = -1;
  size_t tl = 0;
  for (const char *p = body; p && *p;) {
    const char *e = strstr(p, "\n\n");
    if (!e) break;
    if (!strncmp(p, ": ", 2)) o->comments++;
    if (!strncmp(p, "data: ", 6)) {
      o->done = 0;
      if (!strncmp(p + 6, "[DONE]", 6)) {
        o->done = 1;
      } else {
        char *js = strndup(p + 6, (size_t)(e - p - 6));
        cJSON *j = cJSON_Parse(js);
        free(js);
        const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(d, "content");
        if (o->frames == 0) o->role_first = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(d, "role"));
        if (cJSON_IsString(c) && tl + strlen(c->valuestring) < sizeof o->text) {
          memcpy(o->text + tl, c->valuestring, strlen(c->valuestring) + 1);
          tl += strlen(c->valuestring);
        }
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
        if (cJSON_IsString(fr)) snprintf(o->finish, sizeof o->finish, "%s", fr->valuestring);
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
        if (u && !ch) o->usage = (int)cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valuedouble;
        cJSON_Delete(j);
      }
      o->frames++;
    }
    p = e + 2;
  }
}

static char *json_str(const char *body, const char *a, const char *b, const char *c) {
  cJSON *j = cJSON_Parse(body ? body : "");
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, a);
  if (b) v = cJSON_GetObjectItemCaseSensitive(cJSON_IsArray(v) ? cJSON_GetArrayItem(v, 0) : v, b);
  if (c) v = cJSON_GetObjectItemCaseSensitive(v, c);
  char *r = cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
  cJSON_Delete(j);
  return r;
}

/* ---- the checks -------------------------------------------------------------------------------------------- */

static char chat_ia[1200], chat_url[1200], chat_url_stream[1200];

static void test_routes(const server_t *s) {
  char *b = NULL, *h = NULL;
  T_CHECK(http(s, "/health", "", NULL, NULL) == 200, "/health");
  T_CHECK(http(s, "/v1/models", AUTH, &b, NULL) == 200 && b && strstr(b, "\"id\":\"" MODEL "\""), "/v1/models: %s", b);
  free(b);
  T_CHECK(http(s, "/version", "", &b, NULL) == 200 && b && strstr(b, "\"version\""), "/version: %s", b);
  free(b);
  /* one request first so the histograms have data */
  T_CHECK(http(s, "/v1/chat/completions", AUTH "-d @", NULL, NULL) != 200, "empty -d");
  T_CHECK(http(s, "/metrics", "", &b, &h) == 200, "/metrics");
  const char *names[] = {"vllm:time_to_first_token_seconds_bucket",
                         "vllm:inter_token_latency_seconds_bucket",
                         "vllm:e2e_request_latency_seconds_count",
                         "vllm:num_requests_running{",
                         "vllm:num_requests_waiting{",
                         "vllm:prompt_tokens_total{",
                         "vllm:generation_tokens_total{",
                         "vllm:kv_cache_usage_perc{",
                         "# TYPE vllm:time_to_first_token_seconds histogram"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    T_CHECK(b && strstr(b, names[i]), "/metrics lacks %s", names[i]);
  T_CHECK(h && strstr(h, "text/plain; version=0.0.4"), "/metrics content type");
  free(b);
  free(h);
}

static void test_chat(const server_t *s) {
  char *expect = run_text("--audio " DATA "/alarm-clock-48k-stereo.oga --prompt \"What's that sound?\"");
  T_CHECK(expect && strlen(expect) > 0, "earshot run --json gave no text");
  if (!expect) return;
  snprintf(chat_ia, sizeof chat_ia, "%s/chat-ia.json", SCRATCH);
  snprintf(chat_url, sizeof chat_url, "%s/chat-url.json", SCRATCH);
  snprintf(chat_url_stream, sizeof chat_url_stream, "%s/chat-url-stream.json", SCRATCH);
  const char *alarm[] = {DATA "/alarm-clock-48k-stereo.oga"};
  write_chat(chat_ia, alarm, 1, "input_audio", "What's that sound?", "");
  write_chat(chat_url, alarm, 1, "audio_url", "What's that sound?", "");
  write_chat(chat_url_stream, alarm, 1, "audio_url", "What's that sound?",
             ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
  char args[2048], *b = NULL, *h = NULL;
  /* non-streamed, input_audio */
  snprintf(args, sizeof args, AUTH "-H 'Content-Type: application/json' -d @%s", chat_ia);
  T_CHECK(http(s, "/v1/chat/completions", args, &b, &h) == 200, "chat input_audio: %s", b);
  char *text = json_str(b, "choices", "message", "content");
  char *fin = json_str(b, "choices", "finish_reason", NULL);
  T_CHECK(text && !strcmp(text, expect), "chat input_audio: '%s' != earshot run '%s'", text, expect);
  T_CHECK(fin && !strcmp(fin, "length"), "chat finish_reason %s", fin);
  T_CHECK(b && strstr(b, "\"object\":\"chat.completion\"") && strstr(b, "\"completion_tokens\":20"), "chat body %s", b);
  T_CHECK(h && strstr(h, "application/json"), "chat content type");
  free(text), free(fin), free(b), free(h);
  /* non-streamed, audio_url */
  snprintf(args, sizeof args, AUTH "-d @%s", chat_url);
  T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "chat audio_url: %s", b);
  text = json_str(b, "choices", "message", "content");
  T_CHECK(text && !strcmp(text, expect), "chat audio_url: '%s' != '%s'", text, expect);
  free(text), free(b);
  /* audio_url file:// under --allowed-local-media-path */
  snprintf(args, sizeof args,
           AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"audio_url\",\"audio_url\":"
                "{\"url\":\"file://" DATA "/alarm-clock-48k-stereo.oga\"}},{\"type\":\"text\",\"text\":"
                "\"What'\\''s that sound?\"}]}],\"temperature\":0,\"repetition_penalty\":1,\"max_tokens\":20,"
                "\"ignore_eos\":true}'");
  T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "chat file://: %s", b);
  text = json_str(b, "choices", "message", "content");
  T_CHECK(text && !strcmp(text, expect), "chat file://: '%s' != '%s'", text, expect);
  free(text), free(b);
  /* streamed, audio_url, include_usage */
  snprintf(args, sizeof args, AUTH "-N -d @%s", chat_url_stream);
  T_CHECK(http(s, "/v1/chat/completions", args, &b, &h) == 200, "chat stream");
  sse_t *o = malloc(sizeof *o);
  parse_sse(b, o);
  T_CHECK(!strcmp(o->text, expect), "chat stream: '%s' != '%s'", o->text, expect);
  T_CHECK(o->role_first && o->done && !strcmp(o->finish, "length") && o->usage == 20,
          "chat stream shape: role %d done %d finish %s usage %d", o->role_first, o->done, o->finish, o->usage);
  T_CHECK(h && strstr(h, "text/event-stream"), "stream content type");
  T_CHECK(b && strstr(b, "\"choices\":[],\"usage\":{\"prompt_tokens\":"), "usage chunk with empty choices");
  free(b);
  /* a stop string: the text before its first occurrence, finish "stop", stop_reason the string; the stream
   * never shows any part of it (held back until decided) */
  const char *q = expect;
  while (*q && !(q[0] >= 'a' && q[0] <= 'z' && q[1] >= 'a' && q[1] <= 'z' && q[2] >= 'a' && q[2] <= 'z')) q++;
  if (*q) {
    char stop[4] = {q[0], q[1], q[2], 0}, extra[160];
    size_t keep = (size_t)(strstr(expect, stop) - expect);
    snprintf(extra, sizeof extra, ",\"stop\":[\"%s\"],\"stream\":true", stop);
    char sp[1200];
    snprintf(sp, sizeof sp, "%s/chat-stop.json", SCRATCH);
    write_chat(sp, alarm, 1, "input_audio", "What's that sound?", extra);
    snprintf(args, sizeof args, AUTH "-d @%s", sp);
    T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "stop string");
    parse_sse(b, o);
    T_CHECK(strlen(o->text) == keep && !strncmp(o->text, expect, keep) && !strcmp(o->finish, "stop"),
            "stop '%s': streamed '%s' (finish %s), expected the first %zu bytes of '%s'", stop, o->text, o->finish,
            keep, expect);
    char want[64];
    snprintf(want, sizeof want, "\"stop_reason\":\"%s\"", stop);
    T_CHECK(b && strstr(b, want), "stop_reason is not the stop string");
    free(b);
  } else {
    T_CHECK(0, "no three lowercase letters in '%s' to use as a stop string", expect);
  }
  free(o), free(h), free(expect);
}

static float f32(const npy_array_t *a, size_t i) {
  return ((const float *)a->data)[i];
}
static int32_t i32(const npy_array_t *a, size_t i) {
  return ((const int32_t *)a->data)[i];
}

/* logprobs against the transformers oracle (case a-analysis-sound: greedy ids, top-8 logits per step, the
 * first step's full logits): each step's top-1 is the greedy id, the chosen token's logprob at step 0 is
 * log_softmax(last_logits), and logprob differences within the top 8 equal the golden logit differences. */
static void test_logprobs(const server_t *s) {
  golden_t G;
  es_error_t err;
  T_REQUIRE(golden_open(&G, ES_SOURCE_DIR, &err) == 0, "%s", err.msg);
  npy_array_t last = {0}, ids = {0}, lg = {0}, greedy = {0};
  const char *dir = "tests/golden/fixtures/cases/a-analysis-sound/";
  char rel[256];
  int ok = 1;
  snprintf(rel, sizeof rel, "%slast_logits.npy", dir);
  ok &= golden_read_npy(&G, rel, &last, &err) == 0;
  snprintf(rel, sizeof rel, "%stop8_ids.npy", dir);
  ok &= golden_read_npy(&G, rel, &ids, &err) == 0;
  snprintf(rel, sizeof rel, "%stop8_logits.npy", dir);
  ok &= golden_read_npy(&G, rel, &lg, &err) == 0;
  snprintf(rel, sizeof rel, "%sgreedy_ids.npy", dir);
  ok &= golden_read_npy(&G, rel, &greedy, &err) == 0;
  T_CHECK(ok, "golden fixtures: %s", err.msg);
  char p[1200], args[1400], *b = NULL;
  snprintf(p, sizeof p, "%s/chat-lp.json", SCRATCH);
  const char *alarm[] = {DATA "/alarm-clock-48k-stereo.oga"};
  write_chat(p, alarm, 1, "input_audio", "What's that sound?", ",\"logprobs\":true,\"top_logprobs\":8");
  snprintf(args, sizeof args, AUTH "-d @%s", p);
  T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "logprobs request: %s", b);
  cJSON *j = cJSON_Parse(b ? b : "");
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0),
                                       "logprobs"),
      "content");
  T_CHECK(cJSON_GetArraySize(content) == 20, "logprobs: %d entries for 20 tokens", cJSON_GetArraySize(content));
  if (ok && cJSON_GetArraySize(content) == 20) {
    double m = -INFINITY, sum = 0, worst = 0;
    for (int64_t i = 0; i < last.count; i++) m = f32(&last, (size_t)i) > m ? f32(&last, (size_t)i) : m;
    for (int64_t i = 0; i < last.count; i++) sum += exp(f32(&last, (size_t)i) - m);
    double lse = m + log(sum);
    int top1_bad = 0, missing = 0;
    for (int step = 0; step < 20; step++) {
      const cJSON *e = cJSON_GetArrayItem(content, step);
      const cJSON *top = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
      double chosen = cJSON_GetObjectItemCaseSensitive(e, "logprob")->valuedouble;
      if (cJSON_GetArraySize(top) != 8) {
        missing++;
        continue;
      }
      const cJSON *t0 = cJSON_GetArrayItem(top, 0);
      /* top-1 = the chosen (greedy) token: the same string and logprob */
      if (strcmp(cJSON_GetObjectItemCaseSensitive(t0, "token")->valuestring,
                 cJSON_GetObjectItemCaseSensitive(e, "token")->valuestring) != 0 ||
          cJSON_GetObjectItemCaseSensitive(t0, "logprob")->valuedouble != chosen)
        top1_bad++;
      if (step == 0) {
        double want = f32(&last, (size_t)i32(&greedy, 0)) - lse;
        T_CHECK(fabs(chosen - want) <= 1e-3 + 1e-4 * fabs(want), "step 0 logprob %.6f, transformers %.6f", chosen,
                want);
      }
      /* differences within the top 8 (LSE cancels): rank k vs rank 0 */
      for (int k = 1; k < 8; k++) {
        double want = f32(&lg, (size_t)step * 8 + k) - f32(&lg, (size_t)step * 8);
        double got = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(top, k), "logprob")->valuedouble - chosen;
        double d = fabs(got - want) / (1.0 + fabs(want));
        worst = d > worst ? d : worst;
      }
    }
    T_CHECK(missing == 0, "%d steps without 8 top_logprobs", missing);
    T_CHECK(top1_bad == 0, "%d steps whose top-1 is not the generated token", top1_bad);
    T_CHECK(worst <= 1e-3, "top-8 logprob differences vs transformers' logits: worst rel err %.3g", worst);
  }
  cJSON_Delete(j);
  free(b);
  /* streamed: one entry per token chunk, and the same numbers */
  write_chat(p, alarm, 1, "input_audio", "What's that sound?", ",\"logprobs\":true,\"stream\":true");
  T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "logprobs stream");
  int entries = 0;
  for (const char *q = b; q && (q = strstr(q, "\"logprobs\":{\"content\":[{\"token\":")); q++) entries++;
  T_CHECK(entries == 20, "logprobs stream: %d entries for 20 tokens", entries);
  free(b);
  /* stop_token_ids: the 6th greedy id stops the request there, and is vLLM's stop_reason */
  if (ok) {
    int32_t stop_id = i32(&greedy, 5);
    int first = 0;
    while (i32(&greedy, (size_t)first) != stop_id) first++;
    char extra[128];
    snprintf(extra, sizeof extra, ",\"stop_token_ids\":[%d]", stop_id);
    write_chat(p, alarm, 1, "input_audio", "What's that sound?", extra);
    T_CHECK(http(s, "/v1/chat/completions", args, &b, NULL) == 200, "stop_token_ids: %s", b);
    char want[160];
    snprintf(want, sizeof want, "\"finish_reason\":\"stop\",\"stop_reason\":%d}", stop_id);
    char used[64];
    snprintf(used, sizeof used, "\"completion_tokens\":%d}", first + 1);
    T_CHECK(b && strstr(b, want) && strstr(b, used), "stop_token_ids %d (first at %d): %s", stop_id, first, b);
    free(b);
  }
  npy_free(&last), npy_free(&ids), npy_free(&lg), npy_free(&greedy);
  golden_close(&G);
}

static void test_forms(const server_t *s) {
  /* two files + prompt on the multipart route: the same as earshot run with two --audio */
  char *expect = run_text("--audio " DATA "/bell-44k-stereo.oga --audio " DATA "/speech-espeak.mp3 --prompt "
                          "\"Which one is speech?\"");
  char *b = NULL;
  T_CHECK(http(s, "/v1/audio/analyze",
               AUTH "-F file=@" DATA "/bell-44k-stereo.oga -F file=@" DATA "/speech-espeak.mp3 -F 'prompt=Which one "
                    "is speech?' -F temperature=0 -F repetition_penalty=1 -F max_tokens=20 -F ignore_eos=true",
               &b, NULL) == 200,
          "analyze: %s", b);
  char *text = json_str(b, "choices", "message", "content");
  T_CHECK(expect && text && !strcmp(text, expect), "analyze two files: '%s' != '%s'", text, expect);
  free(text), free(b);
  T_CHECK(http(s, "/v1/audio/analyze",
               AUTH "-N -F file=@" DATA "/bell-44k-stereo.oga -F file=@" DATA "/speech-espeak.mp3 -F 'prompt=Which "
                    "one is speech?' -F temperature=0 -F repetition_penalty=1 -F max_tokens=20 -F ignore_eos=true "
                    "-F stream=true",
               &b, NULL) == 200,
          "analyze stream");
  sse_t *o = malloc(sizeof *o);
  parse_sse(b, o);
  T_CHECK(expect && !strcmp(o->text, expect) && o->done, "analyze stream: '%s'", o->text);
  free(b), free(expect);

  /* transcription: the ASR prompt is the raw form + "Detect the language and recognize the speech:" */
  expect = run_text("--audio " DATA "/speech-espeak.mp3 --raw --prompt \"Detect the language and recognize the "
                    "speech:\"");
  const char *f = AUTH "-F file=@" DATA "/speech-espeak.mp3 -F model=" MODEL
                       " -F temperature=0 -F repetition_penalty=1 -F max_tokens=20 -F ignore_eos=true ";
  char args[2048];
  snprintf(args, sizeof args, "%s -F response_format=json", f);
  T_CHECK(http(s, "/v1/audio/transcriptions", args, &b, NULL) == 200, "transcription: %s", b);
  text = json_str(b, "text", NULL, NULL);
  T_CHECK(expect && text && !strcmp(text, expect), "transcription: '%s' != '%s'", text, expect);
  free(text), free(b);
  snprintf(args, sizeof args, "%s -F response_format=text", f);
  T_CHECK(http(s, "/v1/audio/transcriptions", args, &b, NULL) == 200 && expect && b && !strcmp(b, expect),
          "transcription text: '%s'", b);
  free(b);
  snprintf(args, sizeof args, "%s -F response_format=verbose_json -F language=en", f);
  T_CHECK(http(s, "/v1/audio/transcriptions", args, &b, NULL) == 200 && b && strstr(b, "\"duration\":5.8") &&
              strstr(b, "\"language\":\"en\""),
          "transcription verbose_json: %s", b);
  free(b);
  snprintf(args, sizeof args, "%s -F stream=true", f);
  T_CHECK(http(s, "/v1/audio/transcriptions", args, &b, NULL) == 200, "transcription stream");
  parse_sse(b, o);
  T_CHECK(expect && !strcmp(o->text, expect) && o->done && b && strstr(b, "transcription.chunk"),
          "transcription stream: '%s'", o->text);
  free(b), free(o), free(expect);
}

static void check_error(const server_t *s, const char *what, const char *path, const char *args, int status,
                        const char *in_message) {
  char *b = NULL, *h = NULL;
  int st = http(s, path, args, &b, &h);
  char *type = json_str(b, "error", "type", NULL), *msg = json_str(b, "error", "message", NULL);
  T_CHECK(st == status, "%s: status %d, expected %d: %s", what, st, status, b);
  T_CHECK(type && msg && (!in_message || strstr(msg, in_message)), "%s: error object %s", what, b);
  if (status == 429 || status == 503) T_CHECK(h && strcasestr(h, "Retry-After:"), "%s: no Retry-After", what);
  free(type), free(msg), free(b), free(h);
}

static void test_errors(const server_t *s) {
  char args[4096], p[1200];
  const char *chat = "/v1/chat/completions";
  check_error(s, "malformed JSON", chat, AUTH "-d '{\"messages\": ['", 400, "JSON");
  check_error(s, "bad field type", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                   "\"temperature\":\"hot\"}'",
              400, "temperature");
  check_error(s, "bad top_p", chat, AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"top_p\":2}'",
              400, "top_p");
  check_error(s, "bad base64", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"input_audio\",\"input_audio\":{\"data\":\"@@not base64@@\",\"format\":\"wav\"}}]}]}'",
              400, "base64");
  check_error(s, "remote URL", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"audio_url\",\"audio_url\":{\"url\":\"https://example.com/a.wav\"}}]}]}'",
              400, "remote URLs are not fetched");
  check_error(s, "file:// outside", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"audio_url\",\"audio_url\":{\"url\":\"file:///etc/passwd\"}}]}]}'",
              400, "outside");
  check_error(s, "file:// escaping with ..", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"audio_url\",\"audio_url\":"
                   "{\"url\":\"file://" DATA "/../bad/image.png\"}}]}]}'",
              400, "outside");
  check_error(s, "image part", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}]}'",
              400, "image_url");
  check_error(s, "top_logprobs without logprobs", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"top_logprobs\":3}'", 400, "logprobs");
  check_error(s, "n=2", chat, AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2}'", 400,
              "n must be 1");
  check_error(s, "max_tokens over the context", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":5000}'", 400,
              "maximum context length");
  /* two 30 s audios = 1500 audio tokens > --max-model-len 1024 */
  snprintf(p, sizeof p, "%s/long.json", SCRATCH);
  const char *two[] = {DATA "/speech-30s-16k.flac", DATA "/speech-30s-16k.flac"};
  write_chat(p, two, 2, "input_audio", "Same speaker?", "");
  snprintf(args, sizeof args, AUTH "-d @%s", p);
  check_error(s, "prompt over --max-model-len", chat, args, 400, "maximum context length");
  check_error(s, "no key", chat, "-d '{}'", 401, "Unauthorized");
  check_error(s, "wrong key", "/v1/models", "-H 'Authorization: Bearer " KEY "x'", 401, NULL);
  check_error(s, "short key", "/v1/models", "-H 'Authorization: Bearer test'", 401, NULL);
  check_error(s, "unknown route", "/v1/nothing", AUTH, 404, NULL);
  check_error(s, "unknown model", chat,
              AUTH "-d '{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":"
                   "\"hi\"}]}'",
              404, "does not exist");
  check_error(s, "GET on a POST route", chat, AUTH, 405, NULL);
  check_error(s, "POST on a GET route", "/v1/models", AUTH "-d x", 405, NULL);
  /* 413: a 3 MiB body against --max-body-mb 2; audio longer than --max-audio-seconds 40 */
  snprintf(p, sizeof p, "%s/big.json", SCRATCH);
  snprintf(args, sizeof args, "head -c 3145728 /dev/zero | tr '\\0' ' ' > %s", p);
  sh(args, NULL, 0);
  snprintf(args, sizeof args, AUTH "-d @%s", p);
  check_error(s, "body over --max-body-mb", chat, args, 413, "max-body-mb");
  check_error(s, "audio over --max-audio-seconds", "/v1/audio/analyze",
              AUTH "-F file=@" DATA "/speech-long-16k.flac -F prompt=x", 413, "longer than the limit");
  check_error(s, "undecodable audio", "/v1/audio/analyze",
              AUTH "-F file=@" ES_SOURCE_DIR "/tests/data/bad/image.png -F prompt=x", 415, "no audio stream");
  check_error(s, "random bytes as audio", chat,
              AUTH "-d '{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":"
                   "{\"data\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\",\"format\":\"wav\"}}]}]}'",
              415, NULL);
  check_error(s, "analyze without a file", "/v1/audio/analyze", AUTH "-F prompt=x", 400, "file");
  check_error(s, "analyze as JSON", "/v1/audio/analyze", AUTH "-d '{}'", 400, "multipart");
  check_error(s, "transcription bad format", "/v1/audio/transcriptions",
              AUTH "-F file=@" DATA "/speech-espeak.mp3 -F response_format=srt", 400, "response_format");
}

/* Sends the chat request in body_path on a raw socket (so the test controls when it hangs up). Returns the
 * socket, or -1 (*ok = 0) when it could not be sent. */
static int send_raw_chat(const server_t *s, const char *body_path, int *ok) {
  size_t blen = 0;
  char *body = slurp(body_path, &blen);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  *ok = body && fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (*ok) {
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " KEY
                     "\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     blen);
    *ok = write(fd, head, (size_t)n) == n && write(fd, body, blen) == (ssize_t)blen;
  }
  free(body);
  return fd;
}

/* After a hang-up: waits (<= 60 s) until the engine has cancelled one more request than cancelled0, runs
 * nothing and has every KV block free again. */
static void check_cancelled_and_freed(const server_t *s, double cancelled0, const char *what) {
  int freed = 0;
  double cancelled = -1, running = -1, total = -1, free_blocks = -2;
  for (double t0 = es_now_s(); es_now_s() - t0 < 60 && !freed; usleep(100000)) {
    cancelled = metric(s, "earshot:engine_requests_cancelled_total");
    running = metric(s, "vllm:num_requests_running");
    total = metric(s, "earshot:kv_blocks_total");
    free_blocks = metric(s, "earshot:kv_blocks_free");
    freed = cancelled == cancelled0 + 1 && running == 0 && free_blocks == total;
  }
  T_CHECK(freed, "after the %s: cancelled %g (was %g), running %g, KV free %g of %g", what, cancelled, cancelled0,
          running, free_blocks, total);
}

/* Opens a streaming request on a raw socket, reads until the first content chunk, then hangs up. */
static int stream_and_hang_up(const server_t *s, const char *body_path) {
  int ok;
  int fd = send_raw_chat(s, body_path, &ok);
  char buf[4096];
  size_t got = 0;
  char *acc = calloc(1, 1 << 16);
  while (ok && got < (1 << 16) - 4096) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) break;
    memcpy(acc + got, buf, (size_t)r);
    got += (size_t)r;
    if (strstr(acc, "\"content\":\"") && strstr(acc, "\"delta\":{\"content\"")) break; /* a token arrived */
  }
  int saw = acc && strstr(acc, "\"delta\":{\"content\"") != NULL;
  free(acc);
  if (fd >= 0) close(fd);
  return ok && saw;
}

static void test_disconnect(const server_t *s) {
  char p[1200], cmd[2048];
  snprintf(p, sizeof p, "%s/long-stream.json", SCRATCH);
  snprintf(cmd, sizeof cmd,
           "printf '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"max_tokens\":990,"
           "\"ignore_eos\":true}' > %s",
           p);
  sh(cmd, NULL, 0);
  double cancelled0 = metric(s, "earshot:engine_requests_cancelled_total");
  T_CHECK(stream_and_hang_up(s, p), "the stream never produced a token before the hang-up");
  check_cancelled_and_freed(s, cancelled0, "hang-up");
  T_CHECK(metric(s, "vllm:kv_cache_usage_perc") == 0, "KV usage is not 0 after the cancelled request");
}

/* A NON-streamed request whose client sends it and hangs up after delay_ms: the server notices (socket peek on
 * its suspended connection) and cancels it; its KV blocks come back. */
static void test_disconnect_non_stream(const server_t *s) {
  char p[1200], cmd[2048];
  snprintf(p, sizeof p, "%s/long-plain.json", SCRATCH);
  snprintf(cmd, sizeof cmd,
           "printf '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":990,"
           "\"ignore_eos\":true}' > %s",
           p);
  sh(cmd, NULL, 0);
  double cancelled0 = metric(s, "earshot:engine_requests_cancelled_total");
  int ok;
  int fd = send_raw_chat(s, p, &ok);
  T_CHECK(ok, "could not send the non-streamed request");
  /* wait until the engine runs it, then hang up without reading anything */
  for (double t0 = es_now_s(); es_now_s() - t0 < 30 && metric(s, "vllm:num_requests_running") < 1; usleep(20000)) {
  }
  if (fd >= 0) close(fd);
  check_cancelled_and_freed(s, cancelled0, "non-streamed hang-up");
}

/* n streaming requests at once (background curls); returns how many ended with [DONE] and the expected text. */
static int concurrent(const server_t *s, int n, double stagger_s, const char *body_path, const char *tag,
                      const char *expect, int *n429, int *retry_after, int *keepalives) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "cd %s && for i in $(seq 1 %d); do curl -s -N --max-time 300 -D %s-$i.hdr -o %s-$i.body "
           "-H 'Authorization: Bearer " KEY "' -d @%s http://127.0.0.1:%d/v1/chat/completions & sleep %g; done; wait",
           SCRATCH, n, tag, tag, body_path, s->port, stagger_s);
  sh(cmd, NULL, 0);
  int good = 0;
  sse_t *o = malloc(sizeof *o);
  for (int i = 1; i <= n; i++) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s-%d.hdr", SCRATCH, tag, i);
    char *h = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/%s-%d.body", SCRATCH, tag, i);
    char *b = slurp(path, NULL);
    if (h && strstr(h, " 429 ")) {
      if (n429) (*n429)++;
      if (retry_after && strcasestr(h, "Retry-After: ")) (*retry_after)++;
    } else if (h && strstr(h, " 200 ")) {
      parse_sse(b, o);
      if (o->done && (!expect || !strcmp(o->text, expect)))
        good++;
      else
        fprintf(stderr, "stream %s-%d: done %d text '%s'\n", tag, i, o->done, o->text);
      if (keepalives) *keepalives += o->comments;
    }
    free(h), free(b);
  }
  free(o);
  return good;
}

static void test_concurrency(const server_t *s) {
  char p[1200], cmd[2048];
  snprintf(p, sizeof p, "%s/conc.json", SCRATCH);
  snprintf(cmd, sizeof cmd,
           "printf '{\"messages\":[{\"role\":\"user\",\"content\":\"Count to ten.\"}],\"stream\":true,"
           "\"temperature\":0,\"repetition_penalty\":1,\"max_tokens\":40,\"ignore_eos\":true}' > %s",
           p);
  sh(cmd, NULL, 0);
  char *b = NULL;
  snprintf(cmd, sizeof cmd, AUTH "-d @%s", p);
  http(s, "/v1/chat/completions", cmd, &b, NULL);
  sse_t *o = malloc(sizeof *o);
  parse_sse(b, o);
  free(b);
  T_CHECK(o->done && strlen(o->text) > 0, "sequential stream");
  int good = concurrent(s, 16, 0, p, "c16", o->text, NULL, NULL, NULL);
  T_CHECK(good == 16, "16 concurrent streams: %d completed with the greedy text", good);
  free(o);
  T_CHECK(http(s, "/health", "", NULL, NULL) == 200, "healthy after the concurrent streams");
}

/* 40 streams of 300 tokens, started 10 ms apart, against a 4-slot queue: whatever the engine batches runs, 4 wait (and
 * get keep-alive comments while they do), the rest are refused with 429 + Retry-After. */
static void test_queue_full(void) {
  server_t q;
  T_CHECK(server_start(&q, "serve-queue", "--max-queue 4 --max-model-len 1024 --quiet") == 0, "queue server start");
  if (!q.port) return;
  char p[1200], cmd[2048];
  snprintf(p, sizeof p, "%s/q.json", SCRATCH);
  snprintf(cmd, sizeof cmd,
           "printf '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,\"max_tokens\":300,"
           "\"ignore_eos\":true}' > %s",
           p);
  sh(cmd, NULL, 0);
  int n429 = 0, ra = 0, keepalives = 0;
  int good = concurrent(&q, 40, 0.01, p, "q40", NULL, &n429, &ra, &keepalives);
  T_CHECK(n429 > 0 && ra == n429, "queue full: %d x 429 (%d with Retry-After)", n429, ra);
  T_CHECK(good + n429 == 40, "queue full: %d completed + %d refused != 40", good, n429);
  T_CHECK(keepalives > 0, "no SSE keep-alive comment reached a queued stream");
  T_CHECK(http(&q, "/health", "", NULL, NULL) == 200, "queue server healthy afterwards");
  T_CHECK(server_stop(&q, 60, NULL) == 0, "queue server exit");
}

static void test_openai_client(const server_t *s) {
  const char *py = ES_SOURCE_DIR "/build/test-venv/bin/python";
  if (access(py, X_OK) != 0) {
    T_CHECK(0, "%s is missing: run scripts/test-venv.sh (scripts/test.sh does, stage venv)", py);
    return;
  }
  static char out[1 << 16];
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "%s " ES_SOURCE_DIR "/tests/server/openai_client.py http://127.0.0.1:%d/v1 " KEY " " MODEL " " DATA " 2>&1",
           py, s->port);
  int st = sh(cmd, out, sizeof out);
  T_CHECK(st == 0, "openai client: exit %d: %s", st, out);
  if (st) return;
  char *chat = run_text("--audio " DATA "/alarm-clock-48k-stereo.oga --prompt \"What's that sound?\"");
  char *asr = run_text("--audio " DATA "/speech-espeak.mp3 --raw --prompt \"Detect the language and recognize the "
                       "speech:\"");
  char *c1 = json_str(out, "chat", NULL, NULL), *c2 = json_str(out, "chat_stream_url", NULL, NULL);
  char *t = json_str(out, "transcription", NULL, NULL);
  T_CHECK(chat && c1 && !strcmp(c1, chat), "openai chat '%s' != earshot run '%s'", c1, chat);
  T_CHECK(chat && c2 && !strcmp(c2, chat), "openai stream '%s' != earshot run '%s'", c2, chat);
  T_CHECK(asr && t && !strcmp(t, asr), "openai transcription '%s' != earshot run '%s'", t, asr);
  free(chat), free(asr), free(c1), free(c2), free(t);
}

static void test_shutdown(server_t *s) {
  /* a stream in flight when SIGTERM arrives ends with [DONE], and the server exits 0 in bounded time */
  char p[1200], cmd[4096], out_path[1200];
  snprintf(p, sizeof p, "%s/long-stream.json", SCRATCH);
  snprintf(out_path, sizeof out_path, "%s/shutdown-stream.body", SCRATCH);
  snprintf(cmd, sizeof cmd,
           "curl -s -N --max-time 120 -H 'Authorization: Bearer " KEY "' -d @%s "
           "http://127.0.0.1:%d/v1/chat/completions > %s & echo $!",
           p, s->port, out_path);
  char pid[32];
  sh(cmd, pid, sizeof pid);
  for (double t0 = es_now_s(); es_now_s() - t0 < 30; usleep(20000)) { /* until the stream is under way */
    char *b = slurp(out_path, NULL);
    int started = b && strstr(b, "\"delta\":{\"content\"");
    free(b);
    if (started) break;
  }
  double took = 0;
  int st = server_stop(s, 60, &took);
  T_CHECK(st == 0, "SIGTERM: exit status %d", st);
  T_CHECK(took < 30, "SIGTERM: took %.1f s", took);
  waitpid(atoi(pid), NULL, 0);
  snprintf(cmd, sizeof cmd, "while kill -0 %d 2>/dev/null; do sleep 0.05; done", atoi(pid));
  sh(cmd, NULL, 0);
  char *b = slurp(out_path, NULL);
  sse_t *o = malloc(sizeof *o);
  parse_sse(b, o);
  T_CHECK(o->done, "the in-flight stream did not end with [DONE]: ...%s",
          b ? b + (strlen(b) > 300 ? strlen(b) - 300 : 0) : "");
  free(o), free(b);
  char *log = slurp(s->log, NULL);
  T_CHECK(log && strstr(log, "stopped"), "server log lacks 'stopped'");
  free(log);
}

int main(int argc, char **argv) {
  if (sp_init(argc, argv, "server")) return 2;

  server_t s;
  if (server_start(&s, "serve",
                   "--max-model-len 1024 --max-body-mb 2 --max-audio-seconds 40 --shutdown-grace 1 "
                   "--allowed-local-media-path " DATA) != 0) {
    char *log = slurp(s.log, NULL);
    T_CHECK(0, "the server did not start: %s", log ? log : "(no log)");
    free(log);
    if (s.pid > 0) server_stop(&s, 10, NULL);
    return t_finish();
  }
  test_routes(&s);
  test_chat(&s);
  test_logprobs(&s);
  test_forms(&s);
  test_errors(&s);
  test_openai_client(&s);
  test_disconnect(&s);
  test_disconnect_non_stream(&s);
  test_concurrency(&s);
  T_CHECK(http(&s, "/health", "", NULL, NULL) == 200, "still healthy after everything");
  T_CHECK(metric(&s, "vllm:num_requests_running") == 0 && metric(&s, "vllm:kv_cache_usage_perc") == 0,
          "idle at the end: nothing running, no KV blocks held");
  test_shutdown(&s);
  test_queue_full();
  return t_finish();
}
