"""Build script of the libnghttp2 binding (cffi, API mode): run by setup.py, never imported at run
time.

The binding is a compiled C extension, ``offload.proto._nghttp2``, linked against the system's
libnghttp2 (Debian: ``libnghttp2-dev``; 1.52 or later, the version Debian 12 carries with the
Rapid Reset and CONTINUATION fixes). It declares only what :mod:`offload.proto.h2_nghttp2` uses.

Most nghttp2 callbacks fire for every frame; crossing into Python costs far more than the C
work, so the C side here filters: only the frames the engine reacts to reach Python
(``offload_frame_recv``, ``offload_frame_sent``), with their few fields as plain integers. Header
blocks are submitted from one buffer and a list of lengths, so a response head costs one call.
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
int offload_session_new(nghttp2_session **session_ptr, nghttp2_option *option, void *handle);
int offload_submit(nghttp2_session *session, int kind, int32_t stream_id, const char *block,
                   const size_t *lengths, size_t count);

/* Python, called from C */
extern "Python" int offload_begin_headers(void *handle, int32_t stream_id, int category);
extern "Python" int offload_header(nghttp2_session *session, const nghttp2_frame *frame,
                                   const uint8_t *name, size_t namelen, const uint8_t *value,
                                   size_t valuelen, uint8_t flags, void *handle);
extern "Python" int offload_frame_recv(void *handle, uint8_t type, uint8_t flags,
                                       int32_t stream_id, size_t length, uint32_t code,
                                       int64_t argument);
extern "Python" int offload_data_chunk(nghttp2_session *session, uint8_t flags,
                                       int32_t stream_id, const uint8_t *data, size_t len,
                                       void *handle);
extern "Python" int offload_frame_sent(void *handle, uint8_t type, int32_t stream_id,
                                       uint32_t code, int32_t last_stream_id);
extern "Python" int offload_stream_closed(nghttp2_session *session, int32_t stream_id,
                                          uint32_t error_code, void *handle);
extern "Python" int offload_invalid_frame(void *handle, uint8_t type, int32_t stream_id,
                                          int lib_error_code);
extern "Python" ssize_t offload_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                                     size_t length, uint32_t *data_flags,
                                     nghttp2_data_source *source, void *handle);
"""

SOURCE = r"""
#include <string.h>
#include <stdlib.h>
#include <nghttp2/nghttp2.h>

#define OFFLOAD_RESPONSE 0       /* HEADERS, the body comes from the data provider */
#define OFFLOAD_RESPONSE_END 1   /* HEADERS with END_STREAM: no body */
#define OFFLOAD_INTERIM 2        /* a 1xx HEADERS, more follow */
#define OFFLOAD_TRAILERS 3       /* HEADERS with END_STREAM after the body */

static int offload_begin_headers(void *handle, int32_t stream_id, int category);
static int offload_header(nghttp2_session *session, const nghttp2_frame *frame,
                          const uint8_t *name, size_t namelen, const uint8_t *value,
                          size_t valuelen, uint8_t flags, void *handle);
static int offload_frame_recv(void *handle, uint8_t type, uint8_t flags, int32_t stream_id,
                              size_t length, uint32_t code, int64_t argument);
static int offload_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *handle);
static int offload_frame_sent(void *handle, uint8_t type, int32_t stream_id, uint32_t code,
                              int32_t last_stream_id);
static int offload_stream_closed(nghttp2_session *session, int32_t stream_id,
                                 uint32_t error_code, void *handle);
static int offload_invalid_frame(void *handle, uint8_t type, int32_t stream_id,
                                 int lib_error_code);
static ssize_t offload_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *handle);

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *handle) {
    (void)session;
    return offload_begin_headers(handle, frame->hd.stream_id, (int)frame->headers.cat);
}

/* Only what the engine reacts to crosses into Python. */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *handle) {
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

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *handle) {
    (void)session;
    switch (frame->hd.type) {
    case NGHTTP2_RST_STREAM:
        return offload_frame_sent(handle, frame->hd.type, frame->hd.stream_id,
                                  frame->rst_stream.error_code, 0);
    case NGHTTP2_GOAWAY:
        return offload_frame_sent(handle, frame->hd.type, 0, frame->goaway.error_code,
                                  frame->goaway.last_stream_id);
    default:
        return 0;
    }
}

static int on_invalid_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                                 int lib_error_code, void *handle) {
    (void)session;
    return offload_invalid_frame(handle, frame->hd.type, frame->hd.stream_id, lib_error_code);
}

static int offload_session_new(nghttp2_session **session_ptr, nghttp2_option *option,
                               void *handle) {
    nghttp2_session_callbacks *callbacks;
    int rv = nghttp2_session_callbacks_new(&callbacks);
    if (rv != 0) return rv;
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, offload_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, offload_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, offload_stream_closed);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks,
                                                                 on_invalid_frame_recv);
    rv = nghttp2_session_server_new2(session_ptr, callbacks, handle, option);
    nghttp2_session_callbacks_del(callbacks);
    return rv;
}

/* A header block as one buffer of names and values back to back, and their lengths
   (name, value, name, value...). nghttp2 copies the fields before this returns. */
static int offload_submit(nghttp2_session *session, int kind, int32_t stream_id,
                          const char *block, const size_t *lengths, size_t count) {
    nghttp2_nv stack[32];
    nghttp2_nv *nva = stack;
    nghttp2_data_provider provider;
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
        provider.source.ptr = NULL;
        provider.read_callback = offload_read;
        rv = nghttp2_submit_response(session, stream_id, nva, count, &provider);
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
"""


def builder() -> FFI:
    """The FFI builder (setup.py turns it into an extension)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=["nghttp2"])
    return ffi


if __name__ == "__main__":  # build in place, for trying the binding out of a source tree
    builder().compile(verbose=True)
