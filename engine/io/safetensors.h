// The safetensors checkpoint format on plain byte buffers (no Tensor): an 8-byte little-endian u64 header
// length N, N bytes of JSON header {"__metadata__": {str: str}, "name": {"dtype", "shape", "data_offsets"}},
// then the raw little-endian tensor data, row-major, tensors back to back covering the data section exactly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "engine/base/error.h"

namespace sparrow {

// Bytes per element of a safetensors dtype ("F32", "I64", "BF16", ...); 0 for an unknown or sub-byte dtype.
size_t st_dtype_size(const std::string& dtype);

// numel of a shape; throws on a negative dimension or on overflow of int64 (a 0-d shape has one element).
int64_t st_numel(const std::vector<int64_t>& shape);

// One tensor: its dtype name, shape (empty = 0-d scalar) and data (numel * dtype size bytes, little-endian).
struct StEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  int64_t numel() const { return st_numel(shape); }
};

// A whole file. std::map keeps iteration (and so writing) deterministic.
struct StFile {
  std::map<std::string, std::string> metadata;
  std::map<std::string, StEntry> tensors;
};

// Header-only view for inspection: where each tensor lies, relative to the data section start.
struct StInfo {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};
struct StHeader {
  std::map<std::string, std::string> metadata;
  std::map<std::string, StInfo> tensors;
  uint64_t header_size = 0;  // N, the JSON header length including padding
  uint64_t data_size = 0;    // bytes in the data section
};

// The exact bytes write_safetensors puts on disk: tensors laid out in the reference writer's order (wider
// dtypes first so every tensor stays aligned to its element size, then by name), header JSON compact with
// "__metadata__" first (omitted when empty) and padded with spaces to a multiple of 8. Same content, same
// bytes. Throws on an unknown dtype, a data size that does not match the shape, or the name "__metadata__".
std::vector<uint8_t> serialize_safetensors(const StFile& file);

// Atomic (temp file + fsync + rename + directory fsync); see engine/io/atomic_file.h.
void write_safetensors(const std::string& path, const StFile& file);

// Parses and validates untrusted bytes; `name` (usually the path) starts every error message.
StFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name);
StFile read_safetensors(const std::string& path);

// Reads and validates only the header (the data section is checked for size, not read).
StHeader read_safetensors_header(const std::string& path);

// Typed views. T's dtype: float F32, double F64, int8_t I8, uint8_t U8, int16_t I16, uint16_t U16,
// int32_t I32, uint32_t U32, int64_t I64, uint64_t U64 (BOOL, F16, BF16 ... stay raw bytes: std::vector<bool>
// has no data()). Assumes a little-endian host.
template <typename T>
struct StDtypeOf;
#define SPARROW_ST_DTYPE(T, NAME) \
  template <>                     \
  struct StDtypeOf<T> {           \
    static constexpr const char* name = NAME; \
  };
SPARROW_ST_DTYPE(float, "F32")
SPARROW_ST_DTYPE(double, "F64")
SPARROW_ST_DTYPE(int8_t, "I8")
SPARROW_ST_DTYPE(uint8_t, "U8")
SPARROW_ST_DTYPE(int16_t, "I16")
SPARROW_ST_DTYPE(uint16_t, "U16")
SPARROW_ST_DTYPE(int32_t, "I32")
SPARROW_ST_DTYPE(uint32_t, "U32")
SPARROW_ST_DTYPE(int64_t, "I64")
SPARROW_ST_DTYPE(uint64_t, "U64")
#undef SPARROW_ST_DTYPE

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; sparrow's typed views assume a little-endian host"
#endif

// An entry holding `values` (numel(shape) of them) with T's dtype.
template <typename T>
StEntry st_entry(std::vector<int64_t> shape, const T* values) {
  StEntry e;
  e.dtype = StDtypeOf<T>::name;
  e.shape = std::move(shape);
  size_t bytes = static_cast<size_t>(st_numel(e.shape)) * sizeof(T);
  e.data.resize(bytes);
  if (bytes) std::memcpy(e.data.data(), values, bytes);
  return e;
}
template <typename T>
StEntry st_entry(std::vector<int64_t> shape, const std::vector<T>& values) {
  SPARROW_CHECK(static_cast<int64_t>(values.size()) == st_numel(shape), "st_entry: ", values.size(),
                " values for a shape of ", st_numel(shape), " elements");
  return st_entry(std::move(shape), values.data());
}

// The values of an entry as T; throws naming `what` (e.g. the tensor name) when the dtype is not T's.
template <typename T>
std::vector<T> st_values(const StEntry& e, const std::string& what = "tensor") {
  SPARROW_CHECK(e.dtype == StDtypeOf<T>::name, what, " has dtype ", e.dtype, ", expected ",
                StDtypeOf<T>::name);
  SPARROW_CHECK(e.data.size() % sizeof(T) == 0, what, " holds ", e.data.size(), " bytes, not a multiple of ",
                sizeof(T));
  std::vector<T> out(e.data.size() / sizeof(T));
  if (!out.empty()) std::memcpy(static_cast<void*>(out.data()), e.data.data(), e.data.size());
  return out;
}

}  // namespace sparrow
