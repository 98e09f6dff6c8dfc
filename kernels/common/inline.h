// SPARROW_ALWAYS_INLINE: for the small kernels whose registers must live in their caller's loop (tile
// transposes, the sparse convolution's span kernels), where GCC's size heuristics would otherwise emit a
// call per span once a file instantiates them from several passes.
#pragma once

#if defined(__GNUC__)
#define SPARROW_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SPARROW_ALWAYS_INLINE inline
#endif
