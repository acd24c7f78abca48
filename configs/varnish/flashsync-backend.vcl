# Default backend of flashsync.vcl: the demo backend of the local stack
# (`flashsync-demo backend -addr 127.0.0.1:16090`). scripts/stack.sh and the
# tests write their own copy of this file, found first on vcl_path.
backend default {
    .host = "127.0.0.1";
    .port = "16090";
    .connect_timeout = 1s;
    .first_byte_timeout = 5s;
}
