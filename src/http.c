/* SPDX-License-Identifier: MIT */
/* HTTP on the event loop: libcurl's multi-socket API driven by sd-event. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>

#include "http.h"
#include "log.h"

#ifndef WITLINKD_VERSION
#define WITLINKD_VERSION "0"
#endif

struct HttpClient {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        uint64_t bytes;
};

struct HttpRequest {
        HttpClient *client;
        CURL *easy;
        struct curl_slist *headers;
        HttpDoneFunc done;
        void *userdata;
        bool running;

        char *body;
        size_t size, allocated, max_size;
        bool too_large;
        char error[CURL_ERROR_SIZE];

        char *content_type;
        char *activity_id;
        char *location;
        int64_t retry_after_usec;
        int64_t ratelimit_delay_usec;
        int64_t ratelimit_remaining;
        int64_t ratelimit_limit;
        int64_t ratelimit_reset;
        bool host_offline;
};

static void http_client_drain(HttpClient *c);

static int on_io(sd_event_source *s _unused_, int fd, uint32_t revents, void *userdata) {
        HttpClient *c = userdata;
        int flags = 0, running;

        if (revents & (EPOLLIN | EPOLLPRI))
                flags |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
        (void) curl_multi_socket_action(c->multi, fd, flags, &running);
        http_client_drain(c);
        return 0;
}

static int on_timer(sd_event_source *s _unused_, uint64_t usec _unused_, void *userdata) {
        HttpClient *c = userdata;
        int running;

        (void) curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        http_client_drain(c);
        return 0;
}

static int curl_socket_cb(CURL *easy _unused_, curl_socket_t fd, int what, void *userdata,
                          void *socketp) {
        HttpClient *c = userdata;
        sd_event_source *s = socketp;
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        (void) curl_multi_assign(c->multi, fd, NULL);
                        sd_event_source_disable_unref(s);
                }
                return 0;
        }
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
        if (s) {
                r = sd_event_source_set_io_events(s, events);
                if (r >= 0)
                        r = sd_event_source_set_enabled(s, SD_EVENT_ON);
        } else {
                r = sd_event_add_io(c->event, &s, fd, events, on_io, c);
                if (r >= 0) {
                        (void) sd_event_source_set_description(s, "curl-io");
                        if (curl_multi_assign(c->multi, fd, s) != CURLM_OK) {
                                sd_event_source_disable_unref(s);
                                r = -EIO;
                        }
                }
        }
        if (r < 0) {
                log_debug_errno(r, "Failed to watch an HTTP socket: %m");
                return -1;
        }
        return 0;
}

static int curl_timer_cb(CURLM *multi _unused_, long timeout_ms, void *userdata) {
        HttpClient *c = userdata;
        uint64_t now;
        int r;

        if (timeout_ms < 0)
                return sd_event_source_set_enabled(c->timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        r = sd_event_now(c->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return -1;
        r = sd_event_source_set_time(c->timer, now + (uint64_t) timeout_ms * USEC_PER_MSEC);
        if (r < 0)
                return -1;
        return sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT) < 0 ? -1 : 0;
}

int http_client_new(sd_event *event, HttpClient **ret) {
        _cleanup_(http_client_freep) HttpClient *c = NULL;
        int r;

        c = calloc(1, sizeof(HttpClient));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->multi = curl_multi_init();
        if (!c->multi)
                return -ENOMEM;
        r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, UINT64_MAX, 1, on_timer, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(c->timer, "curl-timer");
        if (curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c) != CURLM_OK)
                return -EIO;
        *ret = TAKE_PTR(c);
        return 0;
}

HttpClient *http_client_free(HttpClient *c) {
        if (!c)
                return NULL;
        if (c->multi)
                curl_multi_cleanup(c->multi);
        sd_event_source_disable_unref(c->timer);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}

uint64_t http_client_bytes(HttpClient *c) {
        return c->bytes;
}

static void http_client_drain(HttpClient *c) {
        CURLMsg *m;
        int left;

        while ((m = curl_multi_info_read(c->multi, &left))) {
                HttpRequest *r = NULL;
                HttpResponse resp = {};

                if (m->msg != CURLMSG_DONE)
                        continue;
                (void) curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
                if (!r)
                        continue;
                resp.code = m->data.result;
                (void) curl_multi_remove_handle(c->multi, r->easy);
                r->running = false;
                (void) curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.status);
                resp.error = r->error[0] ? r->error : curl_easy_strerror(resp.code);
                resp.too_large = r->too_large;
                resp.body = r->body ?: "";
                resp.size = r->size;
                resp.content_type = r->content_type;
                resp.activity_id = r->activity_id;
                resp.location = r->location;
                resp.retry_after_usec = r->retry_after_usec;
                resp.ratelimit_delay_usec = r->ratelimit_delay_usec;
                resp.ratelimit_remaining = r->ratelimit_remaining;
                resp.ratelimit_limit = r->ratelimit_limit;
                resp.ratelimit_reset = r->ratelimit_reset;
                resp.too_large = resp.too_large || resp.code == CURLE_FILESIZE_EXCEEDED;
                resp.host_offline = r->host_offline;
                c->bytes += r->size;
                /* The callback may free the request, so it is the last thing that touches it. */
                r->done(r, &resp, r->userdata);
        }
}

static size_t write_cb(char *data, size_t size _unused_, size_t n, void *userdata) {
        HttpRequest *r = userdata;

        if (r->size + n > r->max_size) {
                r->too_large = true;
                return 0; /* aborts the transfer: nothing more is buffered */
        }
        if (r->size + n + 1 > r->allocated) {
                size_t a = r->allocated ? r->allocated : 64 * 1024;
                char *nb;

                while (a < r->size + n + 1)
                        a *= 2;
                nb = realloc(r->body, a);
                if (!nb)
                        return 0;
                r->body = nb;
                r->allocated = a;
        }
        memcpy(r->body + r->size, data, n);
        r->size += n;
        r->body[r->size] = 0;
        return n;
}

static bool header_is(const char *line, size_t len, const char *name, const char **ret_value,
                      size_t *ret_len) {
        size_t nl = strlen(name);
        const char *v, *e;

        if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
                return false;
        v = line + nl + 1;
        e = line + len;
        while (v < e && (*v == ' ' || *v == '\t'))
                v++;
        while (e > v && isspace((unsigned char) e[-1]))
                e--;
        *ret_value = v;
        *ret_len = (size_t) (e - v);
        return true;
}

static void set_copy(char **dst, const char *v, size_t len) {
        free(*dst);
        *dst = strndup(v, len > 512 ? 512 : len);
}

/* A non-negative decimal header value, or -1. */
static double header_number(const char *v, size_t len) {
        char buf[64], *end;
        double d;

        if (len == 0 || len >= sizeof(buf))
                return -1;
        memcpy(buf, v, len);
        buf[len] = 0;
        d = strtod(buf, &end);
        if (end == buf || *end || !(d >= 0) || d > 1e15)
                return -1;
        return d;
}

static void http_request_reset_headers(HttpRequest *r) {
        r->content_type = mfree(r->content_type);
        r->activity_id = mfree(r->activity_id);
        r->location = mfree(r->location);
        r->retry_after_usec = r->ratelimit_delay_usec = -1;
        r->ratelimit_remaining = r->ratelimit_limit = r->ratelimit_reset = -1;
        r->host_offline = false;
}

static size_t header_cb(char *line, size_t size _unused_, size_t n, void *userdata) {
        HttpRequest *r = userdata;
        const char *v;
        size_t len;

        if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
                /* A new response (after 100 Continue, say): forget the previous headers. */
                http_request_reset_headers(r);
                return n;
        }
        if (header_is(line, n, "Content-Type", &v, &len))
                set_copy(&r->content_type, v, len);
        else if (header_is(line, n, "ActivityId", &v, &len))
                set_copy(&r->activity_id, v, len);
        else if (header_is(line, n, "Location", &v, &len))
                set_copy(&r->location, v, len);
        else if (header_is(line, n, "Retry-After", &v, &len)) {
                /* Seconds, or an HTTP date. */
                double secs = header_number(v, len);

                if (secs >= 0)
                        r->retry_after_usec = (int64_t) ((secs < 86400.0 ? secs : 86400.0) * 1e6);
                else if (len < 64) {
                        char date[64];
                        time_t t, now = time(NULL);

                        memcpy(date, v, len);
                        date[len] = 0;
                        t = curl_getdate(date, NULL);
                        if (t > 0)
                                r->retry_after_usec = t > now ? (int64_t) (t - now) * 1000000 : 0;
                }
        } else if (header_is(line, n, "X-RateLimit-Delay", &v, &len)) {
                double secs = header_number(v, len);

                if (secs >= 0 && secs < 3600)
                        r->ratelimit_delay_usec = (int64_t) (secs * 1e6);
        } else if (header_is(line, n, "X-RateLimit-Remaining", &v, &len))
                r->ratelimit_remaining = (int64_t) header_number(v, len);
        else if (header_is(line, n, "X-RateLimit-Limit", &v, &len))
                r->ratelimit_limit = (int64_t) header_number(v, len);
        else if (header_is(line, n, "X-RateLimit-Reset", &v, &len))
                r->ratelimit_reset = (int64_t) header_number(v, len);
        else if (header_is(line, n, "X-VSS-HostOfflineError", &v, &len))
                r->host_offline = true;
        return n;
}

HttpRequest *http_request_free(HttpRequest *r) {
        if (!r)
                return NULL;
        if (r->easy) {
                if (r->running)
                        (void) curl_multi_remove_handle(r->client->multi, r->easy);
                curl_easy_cleanup(r->easy);
        }
        curl_slist_free_all(r->headers);
        free(r->body);
        free(r->content_type);
        free(r->activity_id);
        free(r->location);
        free(r);
        return NULL;
}

int http_request_start(HttpClient *c, const HttpRequestOptions *o, HttpDoneFunc done,
                       void *userdata, HttpRequest **ret) {
        _cleanup_(http_request_freep) HttpRequest *r = NULL;
        uint64_t timeout_ms = o->timeout_usec / USEC_PER_MSEC;
        CURLcode e = CURLE_OK;

        r = calloc(1, sizeof(HttpRequest));
        if (!r)
                return -ENOMEM;
        r->client = c;
        r->done = done;
        r->userdata = userdata;
        r->max_size = o->max_size;
        http_request_reset_headers(r);
        r->easy = curl_easy_init();
        if (!r->easy)
                return -ENOMEM;

        r->headers = curl_slist_append(r->headers, "Accept: application/json");
        if (r->headers)
                r->headers = curl_slist_append(r->headers, "X-TFS-FedAuthRedirect: Suppress");
        if (!r->headers)
                return -ENOMEM;

#define SET(opt, val)                                              \
        do {                                                       \
                if (e == CURLE_OK)                                 \
                        e = curl_easy_setopt(r->easy, opt, val);   \
        } while (0)
        SET(CURLOPT_URL, o->url);
        SET(CURLOPT_PRIVATE, r);
        SET(CURLOPT_NOSIGNAL, 1L);
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_FOLLOWLOCATION, 0L);
        SET(CURLOPT_ACCEPT_ENCODING, "gzip");
        SET(CURLOPT_HTTPHEADER, r->headers);
        SET(CURLOPT_USERAGENT, "witlinkd/" WITLINKD_VERSION);
        SET(CURLOPT_TIMEOUT_MS, (long) timeout_ms);
        SET(CURLOPT_CONNECTTIMEOUT_MS, (long) (timeout_ms < 30000 ? timeout_ms : 30000));
        SET(CURLOPT_TCP_KEEPALIVE, 1L);
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) o->max_size);
        SET(CURLOPT_WRITEFUNCTION, write_cb);
        SET(CURLOPT_WRITEDATA, r);
        SET(CURLOPT_HEADERFUNCTION, header_cb);
        SET(CURLOPT_HEADERDATA, r);
        SET(CURLOPT_ERRORBUFFER, r->error);
        SET(CURLOPT_SSL_VERIFYPEER, 1L);
        SET(CURLOPT_SSL_VERIFYHOST, 2L);
        if (o->ca_file)
                SET(CURLOPT_CAINFO, o->ca_file);
        if (o->auth == AUTH_BEARER) {
                SET(CURLOPT_HTTPAUTH, (long) CURLAUTH_BEARER);
                SET(CURLOPT_XOAUTH2_BEARER, o->token);
        } else {
                SET(CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
                SET(CURLOPT_USERNAME, "");
                SET(CURLOPT_PASSWORD, o->token);
        }
#undef SET
        if (e != CURLE_OK)
                return log_debug_errno(-EINVAL, "Failed to set up an HTTP request: %s",
                                       curl_easy_strerror(e));
        if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK)
                return -EIO;
        r->running = true;
        *ret = TAKE_PTR(r);
        return 0;
}
