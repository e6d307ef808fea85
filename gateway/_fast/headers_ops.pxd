# C versions of headers_ops.py (see its docstring): headers_c.pxd cimports this module as ``ops``, so the
# compiled ``ops.NAME(...)`` calls are these inline functions; nothing here is compiled on its own.
#
# Each returns a new reference: the answer, or None where the call is not a common case (a header that
# is not a tuple of bytes, an argument that is not bytes, a Connection value other than close, keep-alive
# or upgrade, more than one non-empty Connection header, more than 8 X-Forwarded-For headers, a Host with
# non-ASCII characters before its port), which sends headers_py.py to its general code; NULL only when
# memory ran out.
# gw_name_class must agree with headers_py's sets: HOP_BY_HOP, REQUEST_SET_BY_PROXY and x-request-id.

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    enum {
        GW_OTHER,              /* no rule names it */
        GW_HOP,                /* hop-by-hop, other than the two below */
        GW_CONNECTION,
        GW_TRANSFER_ENCODING,  /* hop-by-hop too */
        GW_HOST,
        GW_CONTENT_LENGTH,
        GW_FORWARDED_FOR,
        GW_REQUEST_ID,
        GW_SET_BY_PROXY,       /* the rest of REQUEST_SET_BY_PROXY: dropped from requests only */
    };

    #define GW_IS(s, literal) (memcmp((s), literal, sizeof(literal) - 1) == 0)

    /* The class of a lower-case header name s[0:n]: its length picks at most two names to compare. */
    static inline int gw_name_class(const char *s, Py_ssize_t n) {
        switch (n) {
        case 2: return GW_IS(s, "te") ? GW_HOP : GW_OTHER;
        case 4: return GW_IS(s, "host") ? GW_HOST : GW_OTHER;
        case 6: return GW_IS(s, "expect") ? GW_SET_BY_PROXY : GW_OTHER;
        case 7: return GW_IS(s, "trailer") || GW_IS(s, "upgrade") ? GW_HOP : GW_OTHER;
        case 10:
            if (GW_IS(s, "connection")) return GW_CONNECTION;
            return GW_IS(s, "keep-alive") ? GW_HOP : GW_OTHER;
        case 12: return GW_IS(s, "x-request-id") ? GW_REQUEST_ID : GW_OTHER;
        case 14:
            if (GW_IS(s, "content-length")) return GW_CONTENT_LENGTH;
            return GW_IS(s, "http2-settings") ? GW_SET_BY_PROXY : GW_OTHER;
        case 15: return GW_IS(s, "x-forwarded-for") ? GW_FORWARDED_FOR : GW_OTHER;
        case 16:
            if (GW_IS(s, "proxy-connection")) return GW_HOP;
            return GW_IS(s, "x-forwarded-host") ? GW_SET_BY_PROXY : GW_OTHER;
        case 17:
            if (GW_IS(s, "transfer-encoding")) return GW_TRANSFER_ENCODING;
            return GW_IS(s, "x-forwarded-proto") ? GW_SET_BY_PROXY : GW_OTHER;
        case 18: return GW_IS(s, "proxy-authenticate") ? GW_HOP : GW_OTHER;
        case 19: return GW_IS(s, "proxy-authorization") ? GW_HOP : GW_OTHER;
        default: return GW_OTHER;
        }
    }

    static inline int gw_class_of(PyObject *name) {
        return gw_name_class(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
    }

    /* Whether a Connection value is one of headers_py.PLAIN_CONNECTION (names no other header). */
    static inline int gw_plain_connection(PyObject *value) {
        const char *s = PyBytes_AS_STRING(value);
        switch (PyBytes_GET_SIZE(value)) {
        case 5: return GW_IS(s, "close") || GW_IS(s, "Close");
        case 7: return GW_IS(s, "upgrade") || GW_IS(s, "Upgrade");
        case 10: return GW_IS(s, "keep-alive") || GW_IS(s, "Keep-Alive");
        default: return 0;
        }
    }

    /* The name and value of a header when it is a tuple of two bytes objects (borrowed), else 0. */
    static inline int gw_pair(PyObject *item, PyObject **name, PyObject **value) {
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return 0;
        *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
    }

    /* Whether the request keeps a header it does not set itself: no rule names it, no underscore. */
    static inline int gw_underscored(PyObject *name) {
        return memchr(PyBytes_AS_STRING(name), '_', (size_t)PyBytes_GET_SIZE(name)) != NULL;
    }
    static inline int gw_request_keeps(PyObject *name) {
        return gw_class_of(name) == GW_OTHER && !gw_underscored(name);
    }

    /* Whether the response keeps a header of this name class. */
    static inline int gw_response_keeps(int kind) {
        return kind != GW_HOP && kind != GW_CONNECTION && kind != GW_TRANSFER_ENCODING && kind != GW_REQUEST_ID;
    }

    /* Bit i: whether the first pass kept header i, for the first 64 headers; the second pass classes the
       rest again rather than keep an array of any size. */
    #define GW_KEEP(mask, i) ((i) < 64 ? (mask) |= (uint64_t)1 << (i) : 0)
    #define GW_KEPT(mask, i, again) ((i) < 64 ? (int)(((mask) >> (i)) & 1) : (again))

    static inline char *gw_put(char *out, const char *s, Py_ssize_t n) {
        memcpy(out, s, (size_t)n);
        return out + n;
    }
    #define GW_PUT_LITERAL(out, literal) gw_put((out), literal, sizeof(literal) - 1)
    #define GW_PUT_BYTES(out, b) gw_put((out), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    static PyObject *gw_chunked = NULL;  /* b"chunked", made once */

    static inline PyObject *gw_none(void) {
        Py_INCREF(Py_None);
        return Py_None;
    }

    /* (first, second), taking over both references; both released if the tuple cannot be made. */
    static inline PyObject *gw_tuple2(PyObject *first, PyObject *second) {
        PyObject *result = PyTuple_New(2);
        if (result == NULL) {
            Py_DECREF(first);
            Py_DECREF(second);
            return NULL;
        }
        PyTuple_SET_ITEM(result, 0, first);
        PyTuple_SET_ITEM(result, 1, second);
        return result;
    }

    /* headers_py.request_head, for the common case. */
    static PyObject *gw_request_head(PyObject *method, PyObject *target, PyObject *headers,
                                     PyObject *client_ip, PyObject *scheme, PyObject *request_id,
                                     PyObject *upstream_host, int preserve_host) {
        PyObject *name, *value, *host = NULL, *length = NULL, *connection = NULL, *head, *framing;
        PyObject *forwarded[8];  /* the X-Forwarded-For values, in order; more send it to the general code */
        Py_ssize_t n, i, size, forwarded_size = 0, forwarded_count = 0;
        uint64_t kept = 0;
        int chunked = 0;
        char *out;
        if (!PyList_CheckExact(headers) || !PyBytes_CheckExact(method) || !PyBytes_CheckExact(target)
            || !PyBytes_CheckExact(client_ip) || !PyBytes_CheckExact(scheme)
            || !PyBytes_CheckExact(request_id) || !PyBytes_CheckExact(upstream_host))
            return gw_none();
        n = PyList_GET_SIZE(headers);
        size = PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(target) + (Py_ssize_t)sizeof("  HTTP/1.1\\r\\n") - 1;
        for (i = 0; i < n; i++) {  /* first pass: the rules' headers, and the size of the others */
            if (!gw_pair(PyList_GET_ITEM(headers, i), &name, &value)) return gw_none();
            switch (gw_class_of(name)) {
            case GW_OTHER:
                if (!gw_underscored(name)) {
                    size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4;
                    GW_KEEP(kept, i);
                }
                break;
            case GW_HOST: host = value; break;
            case GW_CONTENT_LENGTH: length = value; break;
            case GW_TRANSFER_ENCODING: chunked = 1; break;
            case GW_FORWARDED_FOR:  /* joined with ", " after the first non-empty value, as the twin does */
                if (forwarded_count == 8) return gw_none();
                forwarded[forwarded_count++] = value;
                forwarded_size += (forwarded_size ? 2 : 0) + PyBytes_GET_SIZE(value);
                break;
            case GW_CONNECTION:
                if (connection != NULL && PyBytes_GET_SIZE(connection)) return gw_none();
                connection = value;
                break;
            default: break;  /* dropped */
            }
        }
        if (connection != NULL && PyBytes_GET_SIZE(connection) && !gw_plain_connection(connection))
            return gw_none();
        if (host != NULL && !PyBytes_GET_SIZE(host)) host = NULL;
        if (length != NULL && !PyBytes_GET_SIZE(length)) length = NULL;
        if (chunked && gw_chunked == NULL && (gw_chunked = PyBytes_FromStringAndSize("chunked", 7)) == NULL)
            return NULL;
        size += (Py_ssize_t)sizeof("host: \\r\\nx-forwarded-for: \\r\\nx-forwarded-proto: ") - 1
            + (Py_ssize_t)sizeof("\\r\\nx-request-id: \\r\\n\\r\\n") - 1;
        size += PyBytes_GET_SIZE(host != NULL && preserve_host ? host : upstream_host) + PyBytes_GET_SIZE(client_ip)
            + PyBytes_GET_SIZE(scheme) + PyBytes_GET_SIZE(request_id);
        if (forwarded_size) size += forwarded_size + 2;
        if (host != NULL) size += (Py_ssize_t)sizeof("x-forwarded-host: \\r\\n") - 1 + PyBytes_GET_SIZE(host);
        if (chunked) size += (Py_ssize_t)sizeof("transfer-encoding: chunked\\r\\n") - 1;
        else if (length != NULL) size += (Py_ssize_t)sizeof("content-length: \\r\\n") - 1 + PyBytes_GET_SIZE(length);

        if ((head = PyBytes_FromStringAndSize(NULL, size)) == NULL) return NULL;
        out = PyBytes_AS_STRING(head);
        out = GW_PUT_BYTES(out, method);
        *out++ = ' ';
        out = GW_PUT_BYTES(out, target);
        out = GW_PUT_LITERAL(out, " HTTP/1.1\\r\\n");
        for (i = 0; i < n; i++) {  /* second pass: the headers kept (the list is as it was: no Python ran) */
            PyObject *item = PyList_GET_ITEM(headers, i);
            name = PyTuple_GET_ITEM(item, 0);
            if (!GW_KEPT(kept, i, gw_request_keeps(name))) continue;
            out = GW_PUT_BYTES(out, name);
            out = GW_PUT_LITERAL(out, ": ");
            out = GW_PUT_BYTES(out, PyTuple_GET_ITEM(item, 1));
            out = GW_PUT_LITERAL(out, "\\r\\n");
        }
        out = GW_PUT_LITERAL(out, "host: ");
        out = GW_PUT_BYTES(out, host != NULL && preserve_host ? host : upstream_host);
        out = GW_PUT_LITERAL(out, "\\r\\nx-forwarded-for: ");
        if (forwarded_size) {
            char *start = out;
            for (i = 0; i < forwarded_count; i++) {
                if (out != start) out = GW_PUT_LITERAL(out, ", ");
                out = GW_PUT_BYTES(out, forwarded[i]);
            }
            out = GW_PUT_LITERAL(out, ", ");
        }
        out = GW_PUT_BYTES(out, client_ip);
        out = GW_PUT_LITERAL(out, "\\r\\nx-forwarded-proto: ");
        out = GW_PUT_BYTES(out, scheme);
        out = GW_PUT_LITERAL(out, "\\r\\nx-request-id: ");
        out = GW_PUT_BYTES(out, request_id);
        out = GW_PUT_LITERAL(out, "\\r\\n");
        if (host != NULL) {
            out = GW_PUT_LITERAL(out, "x-forwarded-host: ");
            out = GW_PUT_BYTES(out, host);
            out = GW_PUT_LITERAL(out, "\\r\\n");
        }
        framing = NULL;
        if (chunked) {
            out = GW_PUT_LITERAL(out, "transfer-encoding: chunked\\r\\n");
            framing = gw_chunked;
        } else if (length != NULL) {
            out = GW_PUT_LITERAL(out, "content-length: ");
            out = GW_PUT_BYTES(out, length);
            out = GW_PUT_LITERAL(out, "\\r\\n");
            if (!(PyBytes_GET_SIZE(length) == 1 && PyBytes_AS_STRING(length)[0] == '0')) framing = length;
        }
        out = GW_PUT_LITERAL(out, "\\r\\n");
        assert(out == PyBytes_AS_STRING(head) + size);
        if (framing != NULL) Py_INCREF(framing);
        else if ((framing = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {  /* the b"" singleton */
            Py_DECREF(head);
            return NULL;
        }
        return gw_tuple2(head, framing);
    }

    /* headers_py.response_headers, for the common case: the kept tuples themselves, in a new list. */
    static PyObject *gw_response_headers(PyObject *headers) {
        PyObject *item, *name, *value, *connection = NULL, *out;
        Py_ssize_t n, i, size = 0;
        uint64_t kept = 0;
        int kind;
        if (!PyList_CheckExact(headers)) return gw_none();
        n = PyList_GET_SIZE(headers);
        for (i = 0; i < n; i++) {
            item = PyList_GET_ITEM(headers, i);
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return gw_none();
            name = PyTuple_GET_ITEM(item, 0), value = PyTuple_GET_ITEM(item, 1);
            if (!PyBytes_CheckExact(name)) return gw_none();
            kind = gw_class_of(name);
            if (kind == GW_CONNECTION) {
                if (!PyBytes_CheckExact(value) || (connection != NULL && PyBytes_GET_SIZE(connection)))
                    return gw_none();
                connection = value;
            } else if (gw_response_keeps(kind)) {
                size++;
                GW_KEEP(kept, i);
            }
        }
        if (connection != NULL && PyBytes_GET_SIZE(connection) && !gw_plain_connection(connection))
            return gw_none();
        if ((out = PyList_New(size)) == NULL) return NULL;
        for (i = 0, size = 0; i < n; i++) {
            item = PyList_GET_ITEM(headers, i);
            if (GW_KEPT(kept, i, gw_response_keeps(gw_class_of(PyTuple_GET_ITEM(item, 0))))) {
                Py_INCREF(item);
                PyList_SET_ITEM(out, size++, item);
            }
        }
        return out;
    }

    /* host_of(value.decode("latin-1")) when the host's part of the value is ASCII; else NULL, without an
       error (str.lower() maps some other Latin-1 letters too: the general code does those). */
    static inline PyObject *gw_ascii_host(PyObject *value) {
        const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(value);
        Py_ssize_t n = PyBytes_GET_SIZE(value), end, i;
        const unsigned char *stop;
        PyObject *host;
        Py_UCS1 *chars;
        if (n && s[0] == '[') {  /* an IPv6 literal: [::1]:8080 */
            stop = memchr(s, ']', (size_t)n);
            end = stop == NULL ? n : stop - s + 1;
        } else {
            stop = memchr(s, ':', (size_t)n);
            end = stop == NULL ? n : stop - s;
        }
        if ((host = PyUnicode_New(end, 127)) == NULL) return NULL;
        chars = PyUnicode_1BYTE_DATA(host);
        for (i = 0; i < end; i++) {
            if (s[i] >= 0x80) {
                Py_DECREF(host);
                return NULL;
            }
            chars[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (Py_UCS1)(s[i] + 32) : s[i];
        }
        return host;
    }

    /* headers_py.request_info, for the common case. */
    static PyObject *gw_request_info(PyObject *headers) {
        PyObject *name, *value, *host_value = NULL, *id_value = NULL, *host, *request_id;
        Py_ssize_t n, i;
        if (!PyList_CheckExact(headers)) return gw_none();
        n = PyList_GET_SIZE(headers);
        for (i = 0; i < n; i++) {
            if (!gw_pair(PyList_GET_ITEM(headers, i), &name, &value)) return gw_none();
            if (PyBytes_GET_SIZE(name) == 4 && GW_IS(PyBytes_AS_STRING(name), "host")) host_value = value;
            else if (PyBytes_GET_SIZE(name) == 12 && GW_IS(PyBytes_AS_STRING(name), "x-request-id")) id_value = value;
        }
        if (host_value == NULL) host = PyUnicode_New(0, 0);
        else if ((host = gw_ascii_host(host_value)) == NULL) return PyErr_Occurred() ? NULL : gw_none();
        if (host == NULL) return NULL;
        request_id = id_value == NULL ? PyUnicode_New(0, 0)
            : PyUnicode_DecodeLatin1(PyBytes_AS_STRING(id_value), PyBytes_GET_SIZE(id_value), NULL);
        if (request_id == NULL) {
            Py_DECREF(host);
            return NULL;
        }
        return gw_tuple2(host, request_id);
    }
    """
    object request_head "gw_request_head"(bytes method, bytes target, list headers, bytes client_ip,
                                          bytes scheme, bytes request_id, bytes upstream_host, bint preserve_host)
    object response_headers "gw_response_headers"(list headers)
    object request_info "gw_request_info"(list headers)


cdef enum:
    FAST = 1
