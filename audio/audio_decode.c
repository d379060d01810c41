/* audio_decode: FFmpeg 5.1 decoding of files and in-memory uploads to 16 kHz mono float32. See audio_decode.h.
 *
 * ref: API-NOTES §B1 (pipeline, pitfalls), FFmpeg 5.1 avio.h/avformat.h/swresample.h, and fftools/ffmpeg
 * 5.1 for what `-ac 1 -ar 16000 -f f32le` does: one libswresample context with default options converts
 * rate, channel layout and sample format together; an unspecified input layout is replaced by the
 * default layout for its channel count (ffmpeg's guess_input_channel_layout).
 *
 * Ownership: every FFmpeg object lives in one decode_state_t and is released in decode_state_free, the
 * single cleanup path. The input buffer is borrowed, never modified.
 * Thread safety: no globals; each call builds and frees its own contexts.
 */
#include "audio_decode.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>

#include "es_file.h"

#define IO_BUFFER_SIZE 65536
#define MIN_SOURCE_RATE 1000   /* below this nothing is speech; guards absurd up-sampling ratios */
#define MAX_SOURCE_RATE 768000 /* above this swr's filter for the down-sampling ratio grows very large */
#define MAX_SOURCE_CHANNELS 64 /* swresample's own limit (SWR_CH_MAX) */

/* Custom I/O over a borrowed buffer. served counts every byte handed to the demuxer; past budget the reads
 * fail, so a demuxer that keeps seeking back (crafted index tables) cannot loop forever. */
typedef struct {
  const uint8_t *data;
  size_t len, pos;
  uint64_t served, budget;
  int over_budget;
} mem_reader_t;

static int mem_read(void *opaque, uint8_t *buf, int size) {
  mem_reader_t *r = opaque;
  if (size <= 0 || r->pos >= r->len) return AVERROR_EOF; /* never 0: avio.h forbids it for streams */
  if (r->served >= r->budget) {
    r->over_budget = 1;
    return AVERROR_EXIT;
  }
  size_t n = r->len - r->pos;
  if (n > (size_t)size) n = (size_t)size;
  memcpy(buf, r->data + r->pos, n);
  r->pos += n;
  r->served += n;
  return (int)n;
}

static int64_t mem_seek(void *opaque, int64_t offset, int whence) {
  mem_reader_t *r = opaque;
  whence &= ~AVSEEK_FORCE;
  if (whence == AVSEEK_SIZE) return (int64_t)r->len;
  int64_t base;
  switch (whence) {
  case SEEK_SET: base = 0; break;
  case SEEK_CUR: base = (int64_t)r->pos; break;
  case SEEK_END: base = (int64_t)r->len; break;
  default: return AVERROR(EINVAL);
  }
  if ((offset > 0 && base > INT64_MAX - offset) || base + offset < 0 || (uint64_t)(base + offset) > r->len)
    return AVERROR(EINVAL);
  r->pos = (size_t)(base + offset);
  return (int64_t)r->pos;
}

/* Demuxers that open further resources (hls, dash, concat, mov data references) go through io_open; an
 * upload must never make us read other files or URLs, so every such open is refused. */
static int refuse_io_open(struct AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                          AVDictionary **options) {
  (void)s, (void)pb, (void)url, (void)flags, (void)options;
  return AVERROR(EPERM);
}

typedef struct {
  mem_reader_t reader;
  AVIOContext *pb;
  AVFormatContext *fmt;
  AVCodecContext *dec;
  SwrContext *swr;
  AVPacket *pkt;
  AVFrame *frame;
  AVChannelLayout swr_in_layout; /* what swr was built for; a change rebuilds it */
  int swr_in_rate, swr_in_format;
  float *samples; /* output, grown by doubling; capped at max_samples */
  size_t n, cap, max_samples;
  audio_downmix_t downmix;
  const char *name;
} decode_state_t;

static void decode_state_free(decode_state_t *s) {
  av_frame_free(&s->frame);
  av_packet_free(&s->pkt);
  swr_free(&s->swr);
  av_channel_layout_uninit(&s->swr_in_layout);
  avcodec_free_context(&s->dec);
  avformat_close_input(&s->fmt); /* does not free a custom pb */
  if (s->pb) {
    av_freep(&s->pb->buffer); /* lavf may have replaced our buffer: free whatever it holds now */
    avio_context_free(&s->pb);
  }
  free(s->samples);
  s->samples = NULL;
}

static const char *av_err(int code, char *buf, size_t cap) {
  if (av_strerror(code, buf, cap) < 0) snprintf(buf, cap, "FFmpeg error %d", code);
  return buf;
}

/* swr_get_out_samples is an upper bound that exceeds the real output by at most about a filter length;
 * an output bound past the limit by more than this is a certain overflow, caught before allocating. */
#define OUT_BOUND_SLACK 16384

/* Makes room for `more` samples (an upper bound of what comes next), failing with ES_ETOOBIG when even
 * the real output must pass the duration limit. */
static int reserve(decode_state_t *s, size_t more, double max_s, es_error_t *err) {
  if (s->n > s->max_samples || more > s->max_samples - s->n + OUT_BOUND_SLACK)
    return es_fail(err, ES_ETOOBIG, "%s: the audio is longer than the limit of %g s", s->name, max_s);
  if (s->n + more <= s->cap) return ES_OK;
  size_t cap = s->cap ? s->cap : 16384;
  while (cap < s->n + more) cap *= 2;
  float *p = realloc(s->samples, cap * sizeof *p);
  if (!p) return es_fail(err, ES_ENOMEM, "%s: out of memory for %zu samples", s->name, cap);
  s->samples = p;
  s->cap = cap;
  return ES_OK;
}

/* (Re)builds the resampler for this frame's rate, format and layout (the first frame, or a mid-stream
 * change after the old one was flushed). */
static int setup_swr(decode_state_t *s, const AVFrame *f, es_error_t *err) {
  char eb[128];
  AVChannelLayout in = {0}, mono = AV_CHANNEL_LAYOUT_MONO;
  int ret = av_channel_layout_copy(&in, &f->ch_layout);
  if (ret < 0) return es_fail(err, ES_ENOMEM, "%s: copying the channel layout failed", s->name);
  if (in.order == AV_CHANNEL_ORDER_UNSPEC) { /* e.g. WAV without a channel mask: ffmpeg guesses the default */
    int nch = in.nb_channels;
    av_channel_layout_uninit(&in);
    av_channel_layout_default(&in, nch);
  }
  swr_free(&s->swr);
  ret = swr_alloc_set_opts2(&s->swr, &mono, AV_SAMPLE_FMT_FLT, AUDIO_SAMPLE_RATE, &in, f->format, f->sample_rate, 0,
                            NULL);
  if (ret >= 0 && s->downmix == AUDIO_DOWNMIX_AVERAGE && in.nb_channels > 1) {
    double m[MAX_SOURCE_CHANNELS];
    for (int c = 0; c < in.nb_channels; c++) m[c] = 1.0 / in.nb_channels;
    ret = swr_set_matrix(s->swr, m, in.nb_channels);
  }
  if (ret >= 0) ret = swr_init(s->swr);
  if (ret < 0) {
    av_channel_layout_uninit(&in);
    return es_fail(err, ES_EUNSUPPORTED, "%s: cannot convert %d Hz, %d channels, sample format %d to 16 kHz mono: %s",
                   s->name, f->sample_rate, f->ch_layout.nb_channels, f->format, av_err(ret, eb, sizeof eb));
  }
  av_channel_layout_uninit(&s->swr_in_layout);
  av_channel_layout_copy(&s->swr_in_layout, &f->ch_layout);
  s->swr_in_rate = f->sample_rate;
  s->swr_in_format = f->format;
  av_channel_layout_uninit(&in);
  return ES_OK;
}

/* Runs swr on n_in samples of in (in == NULL: flush what it holds) and appends all of its output. */
static int convert(decode_state_t *s, const uint8_t **in, int n_in, double max_s, es_error_t *err) {
  char eb[128];
  for (;;) {
    int bound = swr_get_out_samples(s->swr, in ? n_in : 0);
    if (bound < 0) return es_fail(err, ES_EINTERNAL, "%s: resampler: %s", s->name, av_err(bound, eb, sizeof eb));
    if (!in && bound < 1024) bound = 1024; /* a flush asks until swr answers 0 */
    if (bound == 0) return ES_OK;
    int rc = reserve(s, (size_t)bound, max_s, err);
    if (rc) return rc;
    uint8_t *out = (uint8_t *)(s->samples + s->n);
    int got = swr_convert(s->swr, &out, bound, in, in ? n_in : 0);
    if (got < 0) return es_fail(err, ES_EINVAL, "%s: resampling failed: %s", s->name, av_err(got, eb, sizeof eb));
    s->n += (size_t)got;
    if (s->n > s->max_samples)
      return es_fail(err, ES_ETOOBIG, "%s: the audio is longer than the limit of %g s", s->name, max_s);
    if (in || got == 0) return ES_OK; /* with input, bound covered all of the output */
  }
}

static int same_input(const decode_state_t *s, const AVFrame *f) {
  return s->swr && f->sample_rate == s->swr_in_rate && f->format == s->swr_in_format &&
         av_channel_layout_compare(&f->ch_layout, &s->swr_in_layout) == 0;
}

static int take_frame(decode_state_t *s, double max_s, es_error_t *err) {
  const AVFrame *f = s->frame;
  if (f->nb_samples <= 0) return ES_OK;
  if (f->sample_rate < MIN_SOURCE_RATE || f->sample_rate > MAX_SOURCE_RATE)
    return es_fail(err, ES_EUNSUPPORTED, "%s: sample rate %d Hz is outside %d..%d Hz", s->name, f->sample_rate,
                   MIN_SOURCE_RATE, MAX_SOURCE_RATE);
  if (f->ch_layout.nb_channels < 1 || f->ch_layout.nb_channels > MAX_SOURCE_CHANNELS)
    return es_fail(err, ES_EUNSUPPORTED, "%s: %d channels (1..%d supported)", s->name, f->ch_layout.nb_channels,
                   MAX_SOURCE_CHANNELS);
  if (!same_input(s, f)) {
    if (s->swr) {
      int rc = convert(s, NULL, 0, max_s, err);
      if (rc) return rc;
    }
    int rc = setup_swr(s, f, err);
    if (rc) return rc;
  }
  return convert(s, (const uint8_t **)f->extended_data, f->nb_samples, max_s, err);
}

/* Receives every frame the decoder has ready. Returns 0 when it wants more input or is drained, or an
 * ES_E* failure. */
static int drain_decoder(decode_state_t *s, double max_s, int *decode_errors, es_error_t *err) {
  for (;;) {
    int ret = avcodec_receive_frame(s->dec, s->frame);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return ES_OK;
    if (ret == AVERROR(ENOMEM)) return es_fail(err, ES_ENOMEM, "%s: out of memory while decoding", s->name);
    if (ret < 0) { /* a damaged frame: skipped, as the ffmpeg CLI does */
      ++*decode_errors;
      continue;
    }
    int rc = take_frame(s, max_s, err);
    av_frame_unref(s->frame);
    if (rc) return rc;
  }
}

void audio_decode_opts_default(audio_decode_opts_t *opts) {
  opts->max_input_bytes = AUDIO_DEFAULT_MAX_INPUT_BYTES;
  opts->max_duration_s = AUDIO_DEFAULT_MAX_DURATION_S;
  opts->downmix = AUDIO_DOWNMIX_FFMPEG;
}

void audio_pcm_free(audio_pcm_t *pcm) {
  if (!pcm) return;
  free(pcm->samples);
  memset(pcm, 0, sizeof *pcm);
}

void audio_decode_global_init(int quiet) {
  av_max_alloc(AUDIO_FFMPEG_MAX_ALLOC);
  av_log_set_level(quiet ? AV_LOG_QUIET : AV_LOG_ERROR);
}

int audio_decode_memory(const void *buf, size_t len, const char *name, const audio_decode_opts_t *opts,
                        audio_pcm_t *out, es_error_t *err) {
  char eb[128];
  audio_decode_opts_t o;
  audio_decode_opts_default(&o);
  if (opts) {
    if (opts->max_input_bytes) o.max_input_bytes = opts->max_input_bytes;
    if (opts->max_duration_s > 0) o.max_duration_s = opts->max_duration_s;
    o.downmix = opts->downmix;
  }
  if (!name) name = "<audio>";
  memset(out, 0, sizeof *out);
  if (!buf && len) return es_fail(err, ES_EINVAL, "%s: null buffer", name);
  if (o.downmix != AUDIO_DOWNMIX_FFMPEG && o.downmix != AUDIO_DOWNMIX_AVERAGE)
    return es_fail(err, ES_EINVAL, "%s: unknown downmix %d", name, (int)o.downmix);
  if (len == 0) return es_fail(err, ES_EINVAL, "%s: empty input (0 bytes)", name);
  if (len > o.max_input_bytes)
    return es_fail(err, ES_ETOOBIG, "%s: %zu bytes is over the input limit of %zu bytes", name, len, o.max_input_bytes);
  const double max_samples_d = o.max_duration_s * AUDIO_SAMPLE_RATE;
  if (!(max_samples_d >= 1.0) || max_samples_d > (double)(SIZE_MAX / sizeof(float) / 2))
    return es_fail(err, ES_EINVAL, "%s: bad duration limit %g s", name, o.max_duration_s);

  decode_state_t s = {0};
  s.name = name;
  s.downmix = o.downmix;
  s.max_samples = (size_t)max_samples_d;
  s.reader.data = buf;
  s.reader.len = len;
  s.reader.budget = (uint64_t)len * 32 + ((uint64_t)4 << 20);
  int rc = ES_OK, ret;

  uint8_t *iobuf = av_malloc(IO_BUFFER_SIZE);
  if (!iobuf) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  s.pb = avio_alloc_context(iobuf, IO_BUFFER_SIZE, 0, &s.reader, mem_read, NULL, mem_seek);
  if (!s.pb) {
    av_free(iobuf);
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  s.fmt = avformat_alloc_context();
  if (!s.fmt) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  s.fmt->pb = s.pb; /* custom I/O: lavf will not close it */
  s.fmt->io_open = refuse_io_open;
  ret = avformat_open_input(&s.fmt, NULL, NULL, NULL); /* frees fmt itself on failure */
  if (ret < 0) {
    rc = es_fail(err, ret == AVERROR(ENOMEM) ? ES_ENOMEM : ES_EINVAL,
                 "%s: cannot open as audio: unknown format, or a truncated or corrupt header (%s)", name,
                 s.reader.over_budget ? "read budget exhausted" : av_err(ret, eb, sizeof eb));
    goto fail;
  }
  ret = avformat_find_stream_info(s.fmt, NULL);
  if (ret < 0) {
    rc = es_fail(err, ES_EINVAL, "%s: cannot read the stream information (%s)", name, av_err(ret, eb, sizeof eb));
    goto fail;
  }
  const AVCodec *codec = NULL;
  int si = av_find_best_stream(s.fmt, AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
  if (si == AVERROR_STREAM_NOT_FOUND) {
    int video = 0;
    for (unsigned i = 0; i < s.fmt->nb_streams; i++)
      video |= s.fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO;
    rc = es_fail(err, ES_EINVAL, "%s: no audio stream in this %s file%s", name, s.fmt->iformat->name,
                 video ? " (video only)" : "");
    goto fail;
  }
  if (si == AVERROR_DECODER_NOT_FOUND || si < 0) {
    const AVCodecParameters *par = NULL;
    for (unsigned i = 0; i < s.fmt->nb_streams && !par; i++)
      if (s.fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) par = s.fmt->streams[i]->codecpar;
    if (par && par->codec_id != AV_CODEC_ID_NONE)
      rc = es_fail(err, ES_EUNSUPPORTED, "%s: unsupported audio codec '%s' (no decoder) in this %s file", name,
                   avcodec_get_name(par->codec_id), s.fmt->iformat->name);
    else
      rc = es_fail(err, ES_EUNSUPPORTED, "%s: unsupported audio codec (unknown codec tag 0x%x) in this %s file", name,
                   par ? par->codec_tag : 0u, s.fmt->iformat->name);
    goto fail;
  }
  AVStream *st = s.fmt->streams[si];
  s.dec = avcodec_alloc_context3(codec);
  if (!s.dec) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  ret = avcodec_parameters_to_context(s.dec, st->codecpar);
  if (ret >= 0) {
    s.dec->pkt_timebase = st->time_base; /* lets decoders trim priming samples without warnings */
    s.dec->thread_count = 1;             /* deterministic and bounded; audio decoders barely thread anyway */
    ret = avcodec_open2(s.dec, codec, NULL);
  }
  if (ret < 0) {
    rc = es_fail(err, ES_EUNSUPPORTED, "%s: cannot open the %s decoder (%s)", name, codec->name,
                 av_err(ret, eb, sizeof eb));
    goto fail;
  }
  s.pkt = av_packet_alloc();
  s.frame = av_frame_alloc();
  if (!s.pkt || !s.frame) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
    goto fail;
  }

  /* Every packet carries at least one byte, so this cap is never reached by honest input; it bounds the
   * loop even if a demuxer produced packets without consuming input. */
  const uint64_t max_packets = (uint64_t)len + 65536;
  uint64_t packets = 0, stream_packets = 0;
  int decode_errors = 0;
  for (;;) {
    ret = av_read_frame(s.fmt, s.pkt);
    if (ret == AVERROR_EOF) break;
    if (ret < 0) {
      if (s.reader.over_budget) {
        rc = es_fail(err, ES_EINVAL, "%s: the demuxer kept re-reading the input (read budget exhausted)", name);
        goto fail;
      }
      if (ret == AVERROR(ENOMEM)) {
        rc = es_fail(err, ES_ENOMEM, "%s: out of memory while demuxing", name);
        goto fail;
      }
      break; /* damaged or truncated tail: keep what was decoded, as the ffmpeg CLI does */
    }
    if (++packets > max_packets) {
      av_packet_unref(s.pkt);
      rc = es_fail(err, ES_EINVAL, "%s: more packets than input bytes: malformed container", name);
      goto fail;
    }
    if (s.pkt->stream_index != si) {
      av_packet_unref(s.pkt);
      continue;
    }
    stream_packets++;
    ret = avcodec_send_packet(s.dec, s.pkt);
    av_packet_unref(s.pkt);
    if (ret == AVERROR(ENOMEM)) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory while decoding", name);
      goto fail;
    }
    if (ret < 0 && ret != AVERROR(EAGAIN)) decode_errors++; /* a damaged packet: skipped */
    rc = drain_decoder(&s, o.max_duration_s, &decode_errors, err);
    if (rc) goto fail;
  }
  ret = avcodec_send_packet(s.dec, NULL); /* flush the decoder */
  if (ret >= 0) {
    rc = drain_decoder(&s, o.max_duration_s, &decode_errors, err);
    if (rc) goto fail;
  }
  if (s.swr) {
    rc = convert(&s, NULL, 0, o.max_duration_s, err);
    if (rc) goto fail;
  }
  if (s.n == 0) {
    if (stream_packets == 0)
      rc =
          es_fail(err, ES_EINVAL, "%s: the %s stream of this %s file holds no audio data (empty, truncated or corrupt)",
                  name, codec->name, s.fmt->iformat->name);
    else
      rc = es_fail(err, ES_EINVAL, "%s: no audio could be decoded from the %s stream of this %s file (%s)", name,
                   codec->name, s.fmt->iformat->name,
                   decode_errors ? "corrupt data: every packet failed to decode" : "empty or truncated");
    goto fail;
  }

  if ((uint64_t)decode_errors * 2 > stream_packets) {
    /* mostly garbage that happened to resync: the ffmpeg CLI would emit noise, a server should refuse */
    rc = es_fail(err, ES_EINVAL, "%s: corrupt data: %d of %llu packets of the %s stream failed to decode", name,
                 decode_errors, (unsigned long long)stream_packets, codec->name);
    goto fail;
  }

  out->samples = s.samples;
  out->n = s.n;
  s.samples = NULL;
  out->source_rate = st->codecpar->sample_rate;
  out->source_channels = st->codecpar->ch_layout.nb_channels;
  snprintf(out->codec, sizeof out->codec, "%s", codec->name);
  snprintf(out->container, sizeof out->container, "%s", s.fmt->iformat->name);
  out->decode_errors = decode_errors;
  decode_state_free(&s);
  return ES_OK;

fail:
  decode_state_free(&s);
  memset(out, 0, sizeof *out);
  return rc;
}

int audio_decode_file(const char *path, const audio_decode_opts_t *opts, audio_pcm_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  size_t max = opts && opts->max_input_bytes ? opts->max_input_bytes : AUDIO_DEFAULT_MAX_INPUT_BYTES;
  char *buf = NULL;
  size_t len = 0;
  int rc = es_read_file(path, max, &buf, &len, err);
  if (rc) return rc; /* es_read_file names the path */
  rc = audio_decode_memory(buf, len, path, opts, out, err);
  free(buf);
  return rc;
}
