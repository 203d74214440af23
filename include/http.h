/* SPDX-License-Identifier: MIT */
/* HTTP on the event loop: libcurl's multi-socket API driven by sd-event. */
#pragma once

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "macro.h"

typedef struct HttpClient HttpClient;
typedef struct HttpRequest HttpRequest;

typedef struct HttpResponse {
        CURLcode code;      /* CURLE_OK when a response arrived */
        const char *error;  /* curl's explanation when code != CURLE_OK */
        long status;        /* HTTP status, 0 when none arrived */
        const char *body;   /* NUL-terminated for convenience; may contain NULs */
        size_t size;
        bool too_large;     /* the body exceeded the limit and the transfer was aborted */
        const char *content_type;
        const char *activity_id;
        int64_t retry_after_usec; /* -1 when absent */
        int64_t ratelimit_delay_usec; /* -1 when absent */
        int64_t ratelimit_remaining;  /* -1 when absent */
        int64_t ratelimit_limit;      /* -1 when absent */
        int64_t ratelimit_reset;      /* Unix time, -1 when absent */
        bool host_offline;  /* X-VSS-HostOfflineError was present */
        const char *location;
} HttpResponse;

typedef struct HttpRequestOptions {
        const char *url;
        AuthKind auth;
        const char *token;
        const char *ca_file;
        uint64_t timeout_usec;
        uint64_t max_size;
} HttpRequestOptions;

typedef void (*HttpDoneFunc)(HttpRequest *req, const HttpResponse *resp, void *userdata);

int http_client_new(sd_event *event, HttpClient **ret);
HttpClient *http_client_free(HttpClient *c);
DEFINE_CLEANUP_FUNC(HttpClient, http_client_free);

/* Starts a GET. done runs from the event loop once it ends, in any way; the request stays
 * valid until the caller frees it (freeing a running request cancels it). */
int http_request_start(HttpClient *c, const HttpRequestOptions *o, HttpDoneFunc done,
                       void *userdata, HttpRequest **ret);
HttpRequest *http_request_free(HttpRequest *r);
DEFINE_CLEANUP_FUNC(HttpRequest, http_request_free);

/* Bytes received so far in this process, for the status line. */
uint64_t http_client_bytes(HttpClient *c);
