"""Build script of the libmodsecurity3 binding (cffi, API mode): run by setup.py, never imported
at run time.

The binding is a compiled C extension, ``offload.security._modsecurity``, linked against the
system's libmodsecurity3 (Debian: ``libmodsecurity-dev``, which brings ``libmodsecurity3``). It
declares only what :mod:`offload.security.waf_engine` uses, and calls in API mode release the
GIL, so the engine's work runs in a worker's thread pool beside the event loop.

ModSecurity reports what its rules matched through a log callback. A callback into Python
from the pool's threads would take the GIL for every matched rule; instead a small callback
appends each rule message's id, severity and text to a bounded per-transaction buffer
(``offload_waf_log``) that Python reads after each phase. They are read from the engine's
``RuleMessage``, hence the few lines of C++: the C API only offers the message as a text line
that quotes the client's data, where a client could forge an ``[id "..."]``.
A request head is handed over in one call (connection, URI, every header, phase 1), so a
request costs two crossings, not one per header.
"""

from __future__ import annotations

from cffi import FFI

MODULE = "offload.security._modsecurity"

CDEF = """
typedef ... ModSecurity;
typedef ... RulesSet;
typedef ... Transaction;
typedef struct {
    char *text;
    size_t len;
    size_t cap;
    size_t max;
    unsigned int dropped;
} offload_waf_log;

const char *msc_who_am_i(ModSecurity *msc);
void msc_cleanup(ModSecurity *msc);
RulesSet *msc_create_rules_set(void);
int msc_rules_add_file(RulesSet *rules, const char *file, const char **error);
int msc_rules_add(RulesSet *rules, const char *plain_rules, const char **error);
int msc_rules_cleanup(RulesSet *rules);
Transaction *msc_new_transaction(ModSecurity *ms, RulesSet *rules, void *logCbData);
void msc_transaction_cleanup(Transaction *transaction);
int msc_process_logging(Transaction *transaction);

ModSecurity *offload_waf_init(void);
offload_waf_log *offload_waf_log_new(size_t max);
void offload_waf_log_free(offload_waf_log *log);
void offload_waf_error_free(const char *error);
int offload_waf_head(Transaction *t, const char *client, int client_port, const char *server,
                     int server_port, const char *uri, const char *method, const char *version,
                     const unsigned char *fields, const size_t *lengths, size_t count,
                     int *status);
int offload_waf_body(Transaction *t, const unsigned char *body, size_t size, int *status);
int offload_waf_response_head(Transaction *t, int code, const char *protocol,
                              const unsigned char *fields, const size_t *lengths, size_t count,
                              int *status);
"""

SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <modsecurity/modsecurity.h>
#include <modsecurity/rule_message.h>
#include <modsecurity/rules_set.h>
#include <modsecurity/transaction.h>
#include <modsecurity/intervention.h>

using modsecurity::ModSecurity;
using modsecurity::RulesSet;
using modsecurity::Transaction;
using modsecurity::ModSecurityIntervention;
using namespace modsecurity;

typedef struct {
    char *text;
    size_t len;
    size_t cap;
    size_t max;
    unsigned int dropped;
} offload_waf_log;

#define OFFLOAD_WAF_MESSAGE_MAX 200

/* One line per rule message: "id<TAB>severity<TAB>disruptive<TAB>phase<TAB>message", read from
   the engine's RuleMessage itself (never parsed out of a text line the client could shape),
   up to log->max bytes in all (then only counted). */
static void offload_waf_append(offload_waf_log *log, const char *text, size_t size) {
    if (log->len + size > log->cap) {
        size_t cap = log->cap ? log->cap : 1024;
        char *grown;
        while (cap < log->len + size) cap *= 2;
        grown = (char *)realloc(log->text, cap);
        if (grown == NULL) { log->dropped++; return; }
        log->text = grown;
        log->cap = cap;
    }
    memcpy(log->text + log->len, text, size);
    log->len += size;
}

static void offload_waf_log_cb(void *data, const void *message) {
    offload_waf_log *log = (offload_waf_log *)data;
    const modsecurity::RuleMessage *rm = (const modsecurity::RuleMessage *)message;
    char head[64];
    char text[OFFLOAD_WAF_MESSAGE_MAX];
    size_t size, head_size, i;
    if (log == NULL || rm == NULL) return;
    size = rm->m_message.size();
    if (size > sizeof(text)) size = sizeof(text);
    for (i = 0; i < size; i++) {
        char c = rm->m_message[i];
        text[i] = (c == '\t' || c == '\n' || c == '\r' || c == '\0') ? ' ' : c;
    }
    head_size = (size_t)snprintf(head, sizeof(head), "%d\t%d\t%d\t%d\t", rm->m_ruleId,
                                 rm->m_severity, rm->m_isDisruptive ? 1 : 0, rm->m_phase);
    if (head_size >= sizeof(head)) return;
    if (log->len + head_size + size + 1 > log->max) { log->dropped++; return; }
    offload_waf_append(log, head, head_size);
    offload_waf_append(log, text, size);
    offload_waf_append(log, "\n", 1);
}

static ModSecurity *offload_waf_init(void) {
    modsecurity::ModSecurity *ms = new modsecurity::ModSecurity();
    ms->setConnectorInformation("offload");
    ms->setServerLogCb(offload_waf_log_cb,
                       modsecurity::RuleMessageLogProperty);
    return ms;
}

static offload_waf_log *offload_waf_log_new(size_t max) {
    offload_waf_log *log = (offload_waf_log *)calloc(1, sizeof(offload_waf_log));
    if (log != NULL) log->max = max;
    return log;
}

static void offload_waf_log_free(offload_waf_log *log) {
    if (log == NULL) return;
    free(log->text);
    free(log);
}

static void offload_waf_error_free(const char *error) {
    free((void *)error);
}

/* Whether the transaction must be interrupted now; *status: the status to answer. */
static int offload_waf_verdict(Transaction *t, int *status) {
    ModSecurityIntervention it;
    int disruptive;
    memset(&it, 0, sizeof(it));
    it.status = 200;
    disruptive = msc_intervention(t, &it);
    *status = it.status;
    free(it.url);
    free(it.log);
    return disruptive;
}

static int offload_waf_head(Transaction *t, const char *client, int client_port,
                            const char *server, int server_port, const char *uri,
                            const char *method, const char *version,
                            const unsigned char *fields, const size_t *lengths, size_t count,
                            int *status) {
    size_t i, offset = 0;
    msc_process_connection(t, client, client_port, server, server_port);
    if (offload_waf_verdict(t, status)) return 1;
    msc_process_uri(t, uri, method, version);
    if (offload_waf_verdict(t, status)) return 1;
    for (i = 0; i + 1 < count; i += 2) {
        msc_add_n_request_header(t, fields + offset, lengths[i],
                                 fields + offset + lengths[i], lengths[i + 1]);
        offset += lengths[i] + lengths[i + 1];
    }
    msc_process_request_headers(t);
    return offload_waf_verdict(t, status);
}

static int offload_waf_body(Transaction *t, const unsigned char *body, size_t size,
                            int *status) {
    if (size) msc_append_request_body(t, body, size);
    msc_process_request_body(t);
    return offload_waf_verdict(t, status);
}

static int offload_waf_response_head(Transaction *t, int code, const char *protocol,
                                     const unsigned char *fields, const size_t *lengths,
                                     size_t count, int *status) {
    size_t i, offset = 0;
    for (i = 0; i + 1 < count; i += 2) {
        msc_add_n_response_header(t, fields + offset, lengths[i],
                                  fields + offset + lengths[i], lengths[i + 1]);
        offset += lengths[i] + lengths[i + 1];
    }
    msc_process_response_headers(t, code, protocol);
    return offload_waf_verdict(t, status);
}
"""


def builder() -> FFI:
    """The FFI builder (setup.py turns it into an extension)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=["modsecurity"], source_extension=".cpp")
    return ffi


if __name__ == "__main__":  # build in place, for trying the binding out of a source tree
    builder().compile(verbose=True)
