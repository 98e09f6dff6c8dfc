// safetensors reading (every field of untrusted input validated, one-line errors naming the file) and
// deterministic writing in the reference writer's layout (huggingface/safetensors `serialize`): tensors
// ordered by dtype descending then name, compact header JSON with "__metadata__" first, space padding to 8.
#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <utility>

#include "engine/io/atomic_file.h"

namespace sparrow {
namespace {

constexpr uint64_t kMaxHeaderSize = 100000000;  // the reference reader's limit
constexpr const char* kMetadataKey = "__metadata__";
constexpr int kMaxHeaderDepth = 8;

struct DtypeDesc {
  const char* name;
  size_t size;  // bytes per element; 0 = packs below a byte (unsupported)
};
// In the order of the reference implementation's Dtype enum: the writer sorts by this rank, descending.
constexpr DtypeDesc kDtypes[] = {
    {"BOOL", 1},    {"F4", 0},      {"F6_E2M3", 0}, {"F6_E3M2", 0}, {"U8", 1},  {"I8", 1},   {"F8_E5M2", 1},
    {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2},     {"U16", 2},     {"F16", 2}, {"BF16", 2}, {"I32", 4},
    {"U32", 4},     {"F32", 4},     {"C64", 8},     {"F64", 8},     {"I64", 8}, {"U64", 8},
};

int dtype_rank(const std::string& dtype) {
  for (size_t i = 0; i < sizeof(kDtypes) / sizeof(kDtypes[0]); ++i)
    if (dtype == kDtypes[i].name) return static_cast<int>(i);
  return -1;
}

std::string fmt_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string fmt_range(uint64_t b, uint64_t e) { return str("[", b, ", ", e, "]"); }

// Untrusted text in a message stays on one line and short: control bytes become '?' (and, with
// ascii_only, every non-ASCII byte too, since parser diagnostics may quote malformed UTF-8).
std::string shown(const std::string& s, bool ascii_only = false) {
  constexpr size_t kMax = 240;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80)) ? '?' : s[i];
  }
  if (s.size() > kMax) out += "...";
  return out;
}
std::string shown_json(const nlohmann::json& v) { return shown(v.dump(-1, ' ', true)); }

// Bytes of a tensor, or false on overflow of uint64.
bool byte_size(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  return !__builtin_mul_overflow(n, static_cast<uint64_t>(elem), out);
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Validates the 8-byte length prefix against the file size; returns the header length N.
uint64_t check_prefix(const uint8_t* first8, uint64_t file_size, const std::string& name) {
  SPARROW_CHECK(file_size >= 8, name, ": file is ", file_size,
                " bytes, too short for the 8-byte header length (truncated or not a safetensors file)");
  uint64_t n = read_le_u64(first8);
  SPARROW_CHECK(n <= kMaxHeaderSize, name, ": header length ", n, " exceeds the ", kMaxHeaderSize,
                "-byte limit (corrupt or not a safetensors file)");
  SPARROW_CHECK(n <= file_size - 8, name, ": header length ", n, " exceeds the ", file_size - 8,
                " bytes after the length field (truncated file)");
  SPARROW_CHECK(n >= 2, name, ": header length ", n, " is too short for a JSON object");
  return n;
}

// A JSON number that must be a non-negative integer fitting int64 (shape dims, offsets).
uint64_t json_index(const nlohmann::json& v, const std::string& name, const std::string& tensor,
                    const char* field) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    SPARROW_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), name, ": tensor '",
                  tensor, "' ", field, " value ", u, " is too large");
    return u;
  }
  if (v.is_number_integer())
    SPARROW_FAIL(name, ": tensor '", tensor, "' ", field, " has negative value ", v.get<int64_t>());
  SPARROW_FAIL(name, ": tensor '", tensor, "' ", field, " has non-integer value ", shown_json(v));
}

StHeader parse_header(const uint8_t* json_bytes, uint64_t n, uint64_t data_size, const std::string& name) {
  SPARROW_CHECK(json_bytes[0] == '{', name, ": header does not start with '{' (not a safetensors file)");
  using nlohmann::json;
  json root;
  std::set<std::string> seen;
  // Duplicate top-level keys would silently shadow a tensor; the callback sees each key as it is parsed.
  // Nesting is bounded too: a valid header is 3 levels deep, and deeper values would only be quoted in
  // messages by a recursive dump (a header of "[[[[..." could exhaust the stack).
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    SPARROW_CHECK(depth <= kMaxHeaderDepth, name, ": header nests JSON more than ", kMaxHeaderDepth,
                  " levels deep (not a safetensors header)");
    if (event == json::parse_event_t::key && depth == 1) {
      const std::string& key = parsed.get_ref<const std::string&>();
      SPARROW_CHECK(seen.insert(key).second, name, ": header names '", shown(key), "' twice");
    }
    return true;
  };
  try {
    root = json::parse(json_bytes, json_bytes + n, on_event);
  } catch (const json::exception& e) {
    SPARROW_FAIL(name, ": header is not valid JSON: ", shown(e.what(), true));
  }
  SPARROW_CHECK(root.is_object(), name, ": header is JSON but not an object");

  StHeader h;
  h.header_size = n;
  h.data_size = data_size;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const std::string tn = shown(key);  // for messages
    const json& v = it.value();
    if (key == kMetadataKey) {
      SPARROW_CHECK(v.is_object(), name, ": __metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        SPARROW_CHECK(m.value().is_string(), name, ": __metadata__ value of '", shown(m.key()),
                      "' is not a string: ", shown_json(m.value()));
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    SPARROW_CHECK(v.is_object(), name, ": tensor '", tn, "' entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f)
      SPARROW_CHECK(f.key() == "dtype" || f.key() == "shape" || f.key() == "data_offsets", name,
                    ": tensor '", tn, "' has unknown field '", shown(f.key()), "'");
    SPARROW_CHECK(v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"), name, ": tensor '",
                  tn, "' needs dtype, shape and data_offsets");
    StInfo info;
    SPARROW_CHECK(v["dtype"].is_string(), name, ": tensor '", tn, "' dtype is not a string");
    info.dtype = v["dtype"].get<std::string>();
    int rank = dtype_rank(info.dtype);
    SPARROW_CHECK(rank >= 0, name, ": tensor '", tn, "' has unknown dtype '", shown(info.dtype), "'");
    size_t elem = kDtypes[rank].size;
    SPARROW_CHECK(elem > 0, name, ": tensor '", tn, "' has dtype ", info.dtype,
                  ", which packs elements below a byte and is not supported");

    const json& shape = v["shape"];
    SPARROW_CHECK(shape.is_array(), name, ": tensor '", tn, "' shape is not an array");
    for (const json& d : shape) info.shape.push_back(static_cast<int64_t>(json_index(d, name, tn, "shape")));

    const json& offs = v["data_offsets"];
    SPARROW_CHECK(offs.is_array() && offs.size() == 2, name, ": tensor '", tn,
                  "' data_offsets is not a [begin, end] pair: ", shown_json(offs));
    info.begin = json_index(offs[0], name, tn, "data_offsets");
    info.end = json_index(offs[1], name, tn, "data_offsets");
    SPARROW_CHECK(info.begin <= info.end, name, ": tensor '", tn, "' data_offsets ",
                  fmt_range(info.begin, info.end), " end before they begin");
    SPARROW_CHECK(info.end <= data_size, name, ": tensor '", tn, "' data_offsets ",
                  fmt_range(info.begin, info.end), " exceed the ", data_size, "-byte data section");

    uint64_t bytes = 0;
    SPARROW_CHECK(byte_size(info.shape, elem, &bytes), name, ": tensor '", tn, "' shape ",
                  fmt_shape(info.shape), " of ", info.dtype, " overflows a 64-bit byte count");
    SPARROW_CHECK(bytes == info.end - info.begin, name, ": tensor '", tn, "' of dtype ", info.dtype,
                  " and shape ", fmt_shape(info.shape), " needs ", bytes, " bytes but data_offsets ",
                  fmt_range(info.begin, info.end), " hold ", info.end - info.begin);
    h.tensors.emplace(key, std::move(info));
  }

  // The tensors must tile the data section exactly: no overlap, no gap, nothing left over.
  std::vector<std::pair<const std::string*, const StInfo*>> order;
  for (const auto& kv : h.tensors) order.emplace_back(&kv.first, &kv.second);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.second->begin, a.second->end) < std::make_pair(b.second->begin, b.second->end);
  });
  uint64_t pos = 0;
  const std::string* prev = nullptr;
  for (const auto& [tname, info] : order) {
    if (info->begin < pos)
      SPARROW_FAIL(name, ": tensor '", shown(*tname), "' data_offsets ", fmt_range(info->begin, info->end),
                   " overlap tensor '", shown(*prev), "' ", fmt_range(h.tensors.at(*prev).begin, pos));
    SPARROW_CHECK(info->begin == pos, name, ": bytes ", fmt_range(pos, info->begin),
                  " of the data section belong to no tensor (gap before tensor '", shown(*tname), "')");
    if (info->end > info->begin) {
      pos = info->end;
      prev = tname;
    }
  }
  SPARROW_CHECK(pos == data_size, name, ": the last ", data_size - pos, " bytes of the ", data_size,
                "-byte data section belong to no tensor");
  return h;
}

// --- file access -------------------------------------------------------------------------------------

class ReadFd {
 public:
  explicit ReadFd(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      int err = errno;
      SPARROW_FAIL("cannot open ", path, ": ", std::generic_category().message(err));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      int err = errno;
      SPARROW_FAIL("cannot stat ", path, ": ", std::generic_category().message(err));
    }
    SPARROW_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~ReadFd() { ::close(fd_); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;

  uint64_t size() const { return size_; }

  void read_at(uint64_t offset, void* dst, uint64_t n) {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
      ssize_t got = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        SPARROW_FAIL("cannot read ", path_, ": ", std::generic_category().message(err));
      }
      SPARROW_CHECK(got > 0, path_, ": file ended at byte ", offset, " while reading (truncated while open?)");
      p += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

StHeader read_header_fd(ReadFd& f, const std::string& path) {
  uint8_t first8[8] = {};
  if (f.size() >= 8) f.read_at(0, first8, 8);
  uint64_t n = check_prefix(first8, f.size(), path);
  std::vector<uint8_t> json_bytes(n);
  f.read_at(8, json_bytes.data(), n);
  return parse_header(json_bytes.data(), n, f.size() - 8 - n, path);
}

// --- writing ---------------------------------------------------------------------------------------------

struct Plan {
  std::string header;  // JSON plus padding
  std::vector<const StEntry*> order;
};

Plan plan_layout(const StFile& file, const std::string& name) {
  std::vector<std::pair<const std::string*, const StEntry*>> items;
  for (const auto& kv : file.tensors) {
    const std::string& tname = kv.first;
    const StEntry& e = kv.second;
    SPARROW_CHECK(tname != kMetadataKey, name, ": a tensor cannot be named ", kMetadataKey);
    int rank = dtype_rank(e.dtype);
    SPARROW_CHECK(rank >= 0 && kDtypes[rank].size > 0, name, ": tensor '", tname, "' has unsupported dtype '",
                  e.dtype, "'");
    uint64_t bytes = 0;
    SPARROW_CHECK(byte_size(e.shape, kDtypes[rank].size, &bytes), name, ": tensor '", tname, "' shape ",
                  fmt_shape(e.shape), " is negative or overflows");
    SPARROW_CHECK(bytes == e.data.size(), name, ": tensor '", tname, "' of dtype ", e.dtype, " and shape ",
                  fmt_shape(e.shape), " needs ", bytes, " bytes but holds ", e.data.size());
    items.emplace_back(&tname, &e);
  }
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    int ra = dtype_rank(a.second->dtype), rb = dtype_rank(b.second->dtype);
    if (ra != rb) return ra > rb;
    return *a.first < *b.first;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : file.metadata) meta[kv.first] = kv.second;
    header[kMetadataKey] = std::move(meta);
  }
  Plan plan;
  uint64_t offset = 0;
  for (const auto& [tname, e] : items) {
    nlohmann::ordered_json t = nlohmann::ordered_json::object();
    t["dtype"] = e->dtype;
    t["shape"] = e->shape;
    t["data_offsets"] = {offset, offset + e->data.size()};
    header[*tname] = std::move(t);
    offset += e->data.size();
    plan.order.push_back(e);
  }
  try {
    plan.header = header.dump();
  } catch (const nlohmann::json::exception& e) {
    SPARROW_FAIL(name, ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  plan.header.append((8 - plan.header.size() % 8) % 8, ' ');
  return plan;
}

void put_le_u64(uint64_t v, uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

size_t st_dtype_size(const std::string& dtype) {
  int rank = dtype_rank(dtype);
  return rank < 0 ? 0 : kDtypes[rank].size;
}

int64_t st_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    SPARROW_CHECK(d >= 0, "shape ", fmt_shape(shape), " has a negative dimension");
    SPARROW_CHECK(!__builtin_mul_overflow(n, d, &n), "shape ", fmt_shape(shape), " overflows int64");
  }
  return n;
}

std::vector<uint8_t> serialize_safetensors(const StFile& file) {
  Plan plan = plan_layout(file, "safetensors");
  std::vector<uint8_t> out(8 + plan.header.size());
  put_le_u64(plan.header.size(), out.data());
  std::copy(plan.header.begin(), plan.header.end(), out.begin() + 8);
  for (const StEntry* e : plan.order) out.insert(out.end(), e->data.begin(), e->data.end());
  return out;
}

void write_safetensors(const std::string& path, const StFile& file) {
  Plan plan = plan_layout(file, path);
  // Streamed tensor by tensor: a large checkpoint is never copied into one buffer.
  AtomicFile f(path);
  uint8_t len[8];
  put_le_u64(plan.header.size(), len);
  f.write(len, 8);
  f.write(plan.header.data(), plan.header.size());
  for (const StEntry* e : plan.order) f.write(e->data.data(), e->data.size());
  f.commit();
}

StFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name) {
  uint64_t n = check_prefix(bytes, size, name);
  StHeader h = parse_header(bytes + 8, n, size - 8 - n, name);
  const uint8_t* data = bytes + 8 + n;
  StFile out;
  out.metadata = std::move(h.metadata);
  for (auto& kv : h.tensors) {
    StEntry e;
    e.dtype = std::move(kv.second.dtype);
    e.shape = std::move(kv.second.shape);
    e.data.assign(data + kv.second.begin, data + kv.second.end);
    out.tensors.emplace(kv.first, std::move(e));
  }
  return out;
}

StHeader read_safetensors_header(const std::string& path) {
  ReadFd f(path);
  return read_header_fd(f, path);
}

StFile read_safetensors(const std::string& path) {
  ReadFd f(path);
  StHeader h = read_header_fd(f, path);
  uint64_t data_start = 8 + h.header_size;
  StFile out;
  out.metadata = std::move(h.metadata);
  for (auto& kv : h.tensors) {
    StEntry e;
    e.dtype = std::move(kv.second.dtype);
    e.shape = std::move(kv.second.shape);
    e.data.resize(kv.second.end - kv.second.begin);
    if (!e.data.empty()) f.read_at(data_start + kv.second.begin, e.data.data(), e.data.size());
    out.tensors.emplace(kv.first, std::move(e));
  }
  return out;
}

}  // namespace sparrow
