# flashsync.vcl — Varnish 7.1 VCL for caches purged by flashsync's
# http-purger role (docs/http-caches.md).
#
# Requests flashsync sends (from a client in the purgers ACL):
#   PURGE /item/1.html                        purge that URL (Host as sent)
#   PURGE /  with  xkey-purge: item-1 item-2  purge every object tagged so
#   PURGE /  with  xkey-softpurge: item-1     same, but keep them stale for grace
#   BAN   /  with  X-Ban-Url: ^/item/         ban every URL matching the regex
# Any of them from another client is answered 405.
#
# The backend tags its pages with an `xkey` response header ("item-1",
# space-separated for a page showing several items); the xkey vmod indexes
# the objects by it.
#
# The backend is defined in flashsync-backend.vcl, looked up on vcl_path:
# scripts/stack.sh (and the tests) write one pointing at the demo backend
# (127.0.0.1:16090) in the instance's directory and start varnishd with
# -p vcl_path=<that dir>:<this dir>; configs/varnish/flashsync-backend.vcl is
# the default.
vcl 4.1;

import xkey;

include "flashsync-backend.vcl";

# Who may PURGE and BAN: only the local flashsync by default. Add the
# addresses of the hosts running `flashsync http-purger` (one line each,
# CIDR allowed, e.g. "10.0.0.0"/8;).
acl purgers {
    "127.0.0.1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(405, "PURGE not allowed from " + client.ip));
        }
        if (req.http.xkey-purge) {
            set req.http.x-purged = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Invalidated " + req.http.x-purged + " objects"));
        }
        if (req.http.xkey-softpurge) {
            set req.http.x-purged = xkey.softpurge(req.http.xkey-softpurge);
            return (synth(200, "Invalidated " + req.http.x-purged + " objects (soft)"));
        }
        return (purge);
    }
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(405, "BAN not allowed from " + client.ip));
        }
        if (!req.http.X-Ban-Url) {
            return (synth(400, "BAN needs an X-Ban-Url header (a regex)"));
        }
        ban("req.url ~ " + req.http.X-Ban-Url);
        return (synth(200, "Banned"));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    return (hash);
}

sub vcl_synth {
    # Tell the purger how many objects an xkey purge removed.
    if (req.http.x-purged) {
        set resp.http.x-purged = req.http.x-purged;
    }
}

sub vcl_backend_response {
    # The demo backend sends Cache-Control: max-age=3600; keep a short grace
    # so that soft-purged objects are refreshed in the background.
    set beresp.grace = 10s;
}

sub vcl_deliver {
    # Hit or miss, for humans; tests read X-Varnish (two ids on a hit).
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    # The xkey header is for Varnish, not for clients.
    unset resp.http.xkey;
}
