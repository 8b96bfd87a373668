/* Builds the vendored xxHash (src/vendor/lz4/xxhash.c) for litestream_fast._walcore.
 *
 * GCC's loop vectorizer slows XXH32's streaming update (the four-lane round loop) down
 * by half at -O3: 1.6 ms instead of 0.8 ms per 4 MiB on x86-64. Every LZ4 block we
 * compress or decompress goes through that update for the frame's content checksum, so
 * this file turns the vectorizer off for xxHash alone and leaves the vendored copy as
 * released. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#endif
#include "xxhash.c"
