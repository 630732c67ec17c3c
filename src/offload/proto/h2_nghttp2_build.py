"""Build script of the libnghttp2 binding (cffi, API mode): run by setup.py, never imported at run
time.

The binding is a compiled C extension, ``offload.proto._nghttp2``, linked against the system's
libnghttp2 (Debian: ``libnghttp2-dev``; 1.52 or later, the version Debian 12 carries with the
Rapid Reset and CONTINUATION fixes). It declares only what :mod:`offload.proto.h2_nghttp2` uses.

Most nghttp2 callbacks fire for every frame or every header field; crossing into Python costs
far more than the C work, so the C side here does what needs no Python: it collects a header
block's fields (and enforces the header list size announced, which nghttp2 does not), counts
open streams, and passes on only the frames the engine reacts to (``offload_frame_recv``,
``offload_frame_sent``), with their few fields as plain integers. Header blocks are submitted
from one buffer and a list of lengths, so a response head costs one call.
"""

from __future__ import annotations

from cffi import FFI

MODULE = "offload.proto._nghttp2"

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_option nghttp2_option;
typedef ... nghttp2_frame;        /* C reads frames; Python gets their fields as integers */
typedef ... nghttp2_data_source;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;

#define NGHTTP2_ERR_DEFERRED ...
#define NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE ...
#define NGHTTP2_ERR_CALLBACK_FAILURE ...
#define NGHTTP2_ERR_BAD_CLIENT_MAGIC ...
#define NGHTTP2_ERR_FLOODED ...
#define NGHTTP2_ERR_NOMEM ...
#define NGHTTP2_ERR_HEADER_COMP ...
#define NGHTTP2_ERR_INVALID_ARGUMENT ...
#define NGHTTP2_DATA_FLAG_EOF ...
#define NGHTTP2_DATA_FLAG_NO_END_STREAM ...
#define NGHTTP2_DATA ...
#define NGHTTP2_HEADERS ...
#define NGHTTP2_RST_STREAM ...
#define NGHTTP2_SETTINGS ...
#define NGHTTP2_PING ...
#define NGHTTP2_GOAWAY ...
#define NGHTTP2_WINDOW_UPDATE ...
#define NGHTTP2_FLAG_END_STREAM ...
#define NGHTTP2_HCAT_REQUEST ...
#define NGHTTP2_HCAT_HEADERS ...
#define NGHTTP2_SETTINGS_HEADER_TABLE_SIZE ...
#define NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS ...
#define NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE ...
#define NGHTTP2_SETTINGS_MAX_FRAME_SIZE ...
#define NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE ...
#define OFFLOAD_RESPONSE ...
#define OFFLOAD_RESPONSE_END ...
#define OFFLOAD_INTERIM ...
#define OFFLOAD_TRAILERS ...

int nghttp2_option_new(nghttp2_option **option_ptr);
void nghttp2_option_del(nghttp2_option *option);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val);
void nghttp2_option_set_max_deflate_dynamic_table_size(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_send_header_block_length(nghttp2_option *option, size_t val);

void nghttp2_session_del(nghttp2_session *session);
ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags,
                                          int32_t stream_id, int32_t window_size);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);
int nghttp2_session_terminate_session2(nghttp2_session *session, int32_t last_stream_id,
                                       uint32_t error_code);
int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags,
                            const nghttp2_settings_entry *iv, size_t niv);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              uint32_t error_code);
int nghttp2_submit_shutdown_notice(nghttp2_session *session);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id,
                          uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);
const char *nghttp2_strerror(int lib_error_code);

/* offload's C side (set_source below) */
typedef struct {
    nghttp2_session *session;
    char *block;            /* the header block being received: name NUL value NUL ... */
    size_t used;
    size_t count;           /* fields */
    int overflow;           /* the header list went over max_list_size */
    int open_streams;
    uint8_t *out;           /* what offload_send_all took from nghttp2 */
    const char *reason;     /* why the C side ended the connection, if it did */
    ...;
} offload_context;

offload_context *offload_new(nghttp2_option *option, void *handle, size_t max_list_size);
void offload_del(offload_context *context);
ssize_t offload_send_all(offload_context *context);
int offload_submit(offload_context *context, int kind, int32_t stream_id, const char *block,
                   const size_t *lengths, size_t count);
int offload_push(offload_context *context, int32_t stream_id, const char *data, size_t length,
                 int end_stream);
size_t offload_queued(offload_context *context, int32_t stream_id);
void offload_drop(offload_context *context, int32_t stream_id);
void offload_drop_all(offload_context *context);

/* Python, called from C with the engine's handle */
extern "Python" int offload_frame_recv(void *handle, uint8_t type, uint8_t flags,
                                       int32_t stream_id, size_t length, uint32_t code,
                                       int64_t argument);
extern "Python" int offload_data_chunk(void *handle, int32_t stream_id, const uint8_t *data,
                                       size_t len);
extern "Python" int offload_frame_sent(void *handle, uint8_t type, int32_t stream_id,
                                       uint32_t code);
extern "Python" int offload_invalid_frame(void *handle, int lib_error_code);
"""

SOURCE = r"""
#include <string.h>
#include <stdlib.h>
#include <nghttp2/nghttp2.h>

#define OFFLOAD_RESPONSE 0       /* HEADERS, the body comes from the data provider */
#define OFFLOAD_RESPONSE_END 1   /* HEADERS with END_STREAM: no body */
#define OFFLOAD_INTERIM 2        /* a 1xx HEADERS, more follow */
#define OFFLOAD_TRAILERS 3       /* HEADERS with END_STREAM after the body */

/* A response body waiting for the client's windows: nghttp2's data provider reads from it.
   Every body is also on the context's list, so that those of streams still open when the
   session goes are freed with it. */
typedef struct offload_body {
    struct offload_body *previous, *next;
    int32_t stream_id;
    uint8_t *data;
    size_t start, end, room;
    int ended, deferred;
    char *trailers;             /* a header block as offload_submit takes it, and its lengths */
    size_t *trailer_lengths;
    size_t trailer_count;
} offload_body;

#define OFFLOAD_GAPS 16

typedef struct {
    nghttp2_session *session;
    char *block;
    size_t used;
    size_t count;
    int overflow;
    int open_streams;
    uint8_t *out;
    const char *reason;
    void *handle;
    int32_t last_request;           /* the highest stream a request opened */
    int32_t gaps[OFFLOAD_GAPS][2];  /* stream ids the client skipped (first, last), newest last */
    int gap_count;
    offload_body *bodies;
    size_t room;
    size_t out_room;
    size_t list_size;
    size_t max_list_size;
} offload_context;

static int offload_frame_recv(void *handle, uint8_t type, uint8_t flags, int32_t stream_id,
                              size_t length, uint32_t code, int64_t argument);
static int offload_data_chunk(void *handle, int32_t stream_id, const uint8_t *data, size_t len);
static int offload_frame_sent(void *handle, uint8_t type, int32_t stream_id, uint32_t code);
static int offload_invalid_frame(void *handle, int lib_error_code);

/* Header fields are collected here, in C, and read by Python once per block: a call into
   Python per field would cost more than everything else a request does. Names and values are
   separated by NUL, which neither may contain (nghttp2 checks them, RFC 9113 §8.2.1; checked
   again below), so Python splits the block in one call. */
/* Stream ids the client skipped: it may never use them (RFC 9113 §5.1.1). nghttp2 ignores a
   HEADERS on a lower id it does not know (it cannot tell a skipped id from a closed stream's);
   the skipped ranges are remembered here — the last OFFLOAD_GAPS of them, as clients that
   skip ids at all are rare — and such a HEADERS is a connection error PROTOCOL_ERROR. */
static void note_request(offload_context *context, int32_t stream_id) {
    if (stream_id > context->last_request + 2) {
        if (context->gap_count == OFFLOAD_GAPS) {
            memmove(context->gaps[0], context->gaps[1],
                    (OFFLOAD_GAPS - 1) * sizeof(context->gaps[0]));
            context->gap_count--;
        }
        context->gaps[context->gap_count][0] = context->last_request + 2;
        context->gaps[context->gap_count][1] = stream_id - 2;
        context->gap_count++;
    }
    if (stream_id > context->last_request) context->last_request = stream_id;
}

static int skipped(offload_context *context, int32_t stream_id) {
    int i;
    for (i = 0; i < context->gap_count; i++) {
        if (stream_id >= context->gaps[i][0] && stream_id <= context->gaps[i][1]) return 1;
    }
    return 0;
}

static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *data) {
    offload_context *context = data;
    if (hd->type == NGHTTP2_HEADERS && (hd->stream_id & 1) && hd->stream_id < context->last_request
        && skipped(context, hd->stream_id)) {
        context->reason = "a HEADERS frame on a stream id lower than one already used";
        return nghttp2_session_terminate_session(session, NGHTTP2_PROTOCOL_ERROR);
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *data) {
    offload_context *context = data;
    (void)session;
    context->used = context->count = context->list_size = 0;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        context->open_streams++;
        note_request(context, frame->hd.stream_id);
    }
    return 0;
}

static int grow(void **memory, size_t *room, size_t needed, size_t unit) {
    size_t size = *room ? *room : 16;
    void *larger;
    if (needed <= *room) return 0;
    while (size < needed) size *= 2;
    larger = realloc(*memory, size * unit);
    if (larger == NULL) return -1;
    *memory = larger;
    *room = size;
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *data) {
    offload_context *context = data;
    (void)frame; (void)flags;
    if (context->overflow) return 0;
    /* RFC 9113 §6.5.2: a field counts its name, its value and 32 */
    context->list_size += namelen + valuelen + 32;
    if (context->list_size > context->max_list_size) {
        context->overflow = 1;
        context->reason = "a header list larger than the size announced";
        return nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
    }
    if (memchr(name, 0, namelen) != NULL || memchr(value, 0, valuelen) != NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  /* never reached: nghttp2 refuses NUL */
    }
    if (grow((void **)&context->block, &context->room, context->used + namelen + valuelen + 2,
             1)) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    memcpy(context->block + context->used, name, namelen);
    context->used += namelen;
    context->block[context->used++] = 0;
    memcpy(context->block + context->used, value, valuelen);
    context->used += valuelen;
    context->block[context->used++] = 0;
    context->count++;
    return 0;
}

/* Only what the engine reacts to crosses into Python. */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *data) {
    void *handle = ((offload_context *)data)->handle;
    size_t i;
    int64_t opaque;
    (void)session;
    switch (frame->hd.type) {
    case NGHTTP2_DATA:
        return offload_frame_recv(handle, frame->hd.type, frame->hd.flags, frame->hd.stream_id,
                                  frame->hd.length - frame->data.padlen, 0, 0);
    case NGHTTP2_HEADERS:
        return offload_frame_recv(handle, frame->hd.type, frame->hd.flags, frame->hd.stream_id,
                                  0, (uint32_t)frame->headers.cat, 0);
    case NGHTTP2_RST_STREAM:
        return offload_frame_recv(handle, frame->hd.type, 0, frame->hd.stream_id, 0,
                                  frame->rst_stream.error_code, 0);
    case NGHTTP2_GOAWAY:
        return offload_frame_recv(handle, frame->hd.type, 0, 0, 0, frame->goaway.error_code,
                                  frame->goaway.last_stream_id);
    case NGHTTP2_WINDOW_UPDATE:
        return offload_frame_recv(handle, frame->hd.type, 0, frame->hd.stream_id, 0, 0,
                                  frame->window_update.window_size_increment);
    case NGHTTP2_SETTINGS:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) return 0;
        for (i = 0; i < frame->settings.niv; i++) {
            if (frame->settings.iv[i].settings_id == NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE) {
                return offload_frame_recv(handle, frame->hd.type, 0, 0, 0, 0,
                                          frame->settings.iv[i].value);
            }
        }
        return 0;
    case NGHTTP2_PING:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) return 0;
        memcpy(&opaque, frame->ping.opaque_data, sizeof(opaque));
        return offload_frame_recv(handle, frame->hd.type, frame->hd.flags, 0, 0, 0, opaque);
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *chunk, size_t len, void *data) {
    (void)session; (void)flags;
    return offload_data_chunk(((offload_context *)data)->handle, stream_id, chunk, len);
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *data) {
    void *handle = ((offload_context *)data)->handle;
    (void)session;
    switch (frame->hd.type) {
    case NGHTTP2_RST_STREAM:
        return offload_frame_sent(handle, frame->hd.type, frame->hd.stream_id,
                                  frame->rst_stream.error_code);
    case NGHTTP2_GOAWAY:
        return offload_frame_sent(handle, frame->hd.type, 0, frame->goaway.error_code);
    default:
        return 0;
    }
}

static void body_free(offload_context *context, offload_body *body) {
    if (body->previous) body->previous->next = body->next;
    else context->bodies = body->next;
    if (body->next) body->next->previous = body->previous;
    free(body->data);
    free(body->trailers);
    free(body->trailer_lengths);
    free(body);
}

static offload_body *body_of(offload_context *context, int32_t stream_id) {
    return nghttp2_session_get_stream_user_data(context->session, stream_id);
}

static void offload_drop(offload_context *context, int32_t stream_id) {
    offload_body *body = body_of(context, stream_id);
    if (body == NULL) return;
    nghttp2_session_set_stream_user_data(context->session, stream_id, NULL);
    body_free(context, body);
}

/* The connection is gone: every body still waiting is freed now, not when the collector finds
   the engine (it sits in reference cycles, and each body may hold tens of KiB). */
static void offload_drop_all(offload_context *context) {
    offload_body *body;
    while ((body = context->bodies) != NULL) {
        if (body_of(context, body->stream_id) == body) {
            nghttp2_session_set_stream_user_data(context->session, body->stream_id, NULL);
        }
        body_free(context, body);
    }
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *data) {
    (void)session; (void)error_code;
    ((offload_context *)data)->open_streams--;
    offload_drop(data, stream_id);
    return 0;
}

static size_t offload_queued(offload_context *context, int32_t stream_id) {
    offload_body *body = body_of(context, stream_id);
    return body == NULL ? 0 : body->end - body->start;
}

static int submit_fields(nghttp2_session *session, int kind, int32_t stream_id,
                         const char *block, const size_t *lengths, size_t count,
                         nghttp2_data_provider *provider);

/* The body so far, as the windows allow; the trailers (or END_STREAM) once it has all gone. */
static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                         size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                         void *data) {
    offload_context *context = data;
    offload_body *body = body_of(context, stream_id);
    size_t size;
    (void)source;
    if (body == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  /* not reached */
    size = body->end - body->start;
    if (size > length) size = length;
    memcpy(buf, body->data + body->start, size);
    body->start += size;
    if (body->start < body->end) return (ssize_t)size;
    body->start = body->end = 0;
    if (!body->ended) {
        if (size > 0) return (ssize_t)size;
        body->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (body->trailers != NULL) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (submit_fields(session, OFFLOAD_TRAILERS, stream_id, body->trailers,
                          body->trailer_lengths, body->trailer_count, NULL) != 0) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    offload_drop(context, stream_id);
    return (ssize_t)size;
}

static int resume(offload_context *context, int32_t stream_id, offload_body *body) {
    if (!body->deferred) return 0;
    body->deferred = 0;
    return nghttp2_session_resume_data(context->session, stream_id);
}

/* Body bytes for a stream whose response head said more follows (copied: the caller's buffer
   is free when this returns). A stream that is gone takes nothing. */
static int offload_push(offload_context *context, int32_t stream_id, const char *data,
                        size_t length, int end_stream) {
    offload_body *body = body_of(context, stream_id);
    if (body == NULL || body->ended) return 0;
    if (length > 0) {
        if (body->start > 0 && body->end + length > body->room) {
            memmove(body->data, body->data + body->start, body->end - body->start);
            body->end -= body->start;
            body->start = 0;
        }
        if (grow((void **)&body->data, &body->room, body->end + length, 1)) {
            return NGHTTP2_ERR_NOMEM;
        }
        memcpy(body->data + body->end, data, length);
        body->end += length;
    }
    if (end_stream) body->ended = 1;
    return resume(context, stream_id, body);
}

static int keep_trailers(offload_context *context, int32_t stream_id, const char *block,
                         const size_t *lengths, size_t count) {
    offload_body *body = body_of(context, stream_id);
    size_t size = 0, i;
    if (body == NULL || body->ended) return 0;
    for (i = 0; i < 2 * count; i++) size += lengths[i];
    body->trailers = malloc(size ? size : 1);
    body->trailer_lengths = malloc(2 * count * sizeof(size_t) + 1);
    if (body->trailers == NULL || body->trailer_lengths == NULL) return NGHTTP2_ERR_NOMEM;
    memcpy(body->trailers, block, size);
    memcpy(body->trailer_lengths, lengths, 2 * count * sizeof(size_t));
    body->trailer_count = count;
    body->ended = 1;
    return resume(context, stream_id, body);
}

static int on_invalid_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                                 int lib_error_code, void *data) {
    (void)session; (void)frame;
    return offload_invalid_frame(((offload_context *)data)->handle, lib_error_code);
}

static void offload_del(offload_context *context) {
    if (context == NULL) return;
    nghttp2_session_del(context->session);
    while (context->bodies != NULL) body_free(context, context->bodies);
    free(context->block);
    free(context->out);
    free(context);
}

/* Everything nghttp2 has to send, in one buffer (one call from Python instead of one per
   frame). A buffer grown past 64 KiB by a burst is given back before the next use. */
static ssize_t offload_send_all(offload_context *context) {
    const uint8_t *data;
    size_t used = 0;
    ssize_t length;
    if (context->out_room > 65536) {
        free(context->out);
        context->out = NULL;
        context->out_room = 0;
    }
    for (;;) {
        length = nghttp2_session_mem_send(context->session, &data);
        if (length < 0) return length;
        if (length == 0) return (ssize_t)used;
        if (grow((void **)&context->out, &context->out_room, used + (size_t)length, 1)) {
            return NGHTTP2_ERR_NOMEM;
        }
        memcpy(context->out + used, data, (size_t)length);
        used += (size_t)length;
    }
}

static offload_context *offload_new(nghttp2_option *option, void *handle,
                                    size_t max_list_size) {
    nghttp2_session_callbacks *callbacks;
    offload_context *context = calloc(1, sizeof(offload_context));
    if (context == NULL) return NULL;
    context->handle = handle;
    context->max_list_size = max_list_size;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) {
        free(context);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks,
                                                                 on_invalid_frame_recv);
    if (nghttp2_session_server_new2(&context->session, callbacks, context, option) != 0) {
        free(context);
        context = NULL;
    }
    nghttp2_session_callbacks_del(callbacks);
    return context;
}

/* A header block as one buffer of names and values back to back, and their lengths
   (name, value, name, value...). nghttp2 copies the fields before this returns. */
static int submit_fields(nghttp2_session *session, int kind, int32_t stream_id,
                         const char *block, const size_t *lengths, size_t count,
                         nghttp2_data_provider *provider) {
    nghttp2_nv stack[32];
    nghttp2_nv *nva = stack;
    size_t i, offset = 0;
    int rv;
    if (count > sizeof(stack) / sizeof(stack[0])) {
        nva = malloc(count * sizeof(nghttp2_nv));
        if (nva == NULL) return NGHTTP2_ERR_NOMEM;
    }
    for (i = 0; i < count; i++) {
        nva[i].name = (uint8_t *)block + offset;
        nva[i].namelen = lengths[2 * i];
        offset += lengths[2 * i];
        nva[i].value = (uint8_t *)block + offset;
        nva[i].valuelen = lengths[2 * i + 1];
        offset += lengths[2 * i + 1];
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    switch (kind) {
    case OFFLOAD_RESPONSE:
        rv = nghttp2_submit_response(session, stream_id, nva, count, provider);
        break;
    case OFFLOAD_RESPONSE_END:
        rv = nghttp2_submit_response(session, stream_id, nva, count, NULL);
        break;
    case OFFLOAD_INTERIM:
        rv = nghttp2_submit_headers(session, NGHTTP2_FLAG_NONE, stream_id, NULL, nva, count,
                                    NULL);
        break;
    default:
        rv = nghttp2_submit_trailer(session, stream_id, nva, count);
        break;
    }
    if (nva != stack) free(nva);
    return rv;
}

/* A response head (with a body to come: OFFLOAD_RESPONSE), an interim head, or trailers. */
static int offload_submit(offload_context *context, int kind, int32_t stream_id,
                          const char *block, const size_t *lengths, size_t count) {
    nghttp2_data_provider provider;
    offload_body *body;
    int rv;
    if (kind == OFFLOAD_TRAILERS) return keep_trailers(context, stream_id, block, lengths, count);
    if (kind != OFFLOAD_RESPONSE) {
        return submit_fields(context->session, kind, stream_id, block, lengths, count, NULL);
    }
    if (body_of(context, stream_id) != NULL) return NGHTTP2_ERR_DATA_EXIST;
    body = calloc(1, sizeof(offload_body));
    if (body == NULL) return NGHTTP2_ERR_NOMEM;
    body->stream_id = stream_id;
    if (nghttp2_session_set_stream_user_data(context->session, stream_id, body) != 0) {
        free(body);
        return 0;  /* the stream is gone: nothing to answer */
    }
    body->next = context->bodies;
    if (body->next) body->next->previous = body;
    context->bodies = body;
    provider.source.ptr = NULL;
    provider.read_callback = read_body;
    rv = submit_fields(context->session, kind, stream_id, block, lengths, count, &provider);
    if (rv != 0) offload_drop(context, stream_id);
    return rv;
}
"""


def builder() -> FFI:
    """The FFI builder (setup.py turns it into an extension)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=["nghttp2"])
    return ffi


if __name__ == "__main__":  # build in place, for trying the binding out of a source tree
    builder().compile(verbose=True)
