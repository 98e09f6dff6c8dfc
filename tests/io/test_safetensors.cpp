// safetensors: round trips over dtypes and shapes (0-d, empty), byte-exact determinism, the golden file
// written by tests/fixtures/make_st_golden.py (reference writer layout), rejection of malformed input with
// the exact one-line message, and atomic writes (a failed write leaves the old file and no temp file).
#include "engine/io/safetensors.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "engine/io/atomic_file.h"

namespace sparrow {
namespace {

namespace fs = std::filesystem;

// The message of the Error f throws, without the " [file.cpp:line]" suffix; "" when nothing is thrown.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    std::string m = e.what();
    size_t at = m.rfind(" [");
    return at == std::string::npos ? m : m.substr(0, at);
  }
  return "";
}

// A raw file: length prefix (the real length unless `claimed` is given), header text, `data` zero bytes.
std::vector<uint8_t> raw_file(const std::string& header, size_t data, int64_t claimed = -1) {
  uint64_t len = claimed < 0 ? header.size() : static_cast<uint64_t>(claimed);
  std::vector<uint8_t> out(8 + header.size() + data, 0);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(len >> (8 * i));
  if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sparrow_st_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  std::string put(const std::string& name, const std::vector<uint8_t>& bytes) const {
    std::string p = path(name);
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                             static_cast<std::streamsize>(bytes.size()));
    return p;
  }

  // Reading `bytes` from a file fails with exactly "<path>: <problem>"; parsing them in memory agrees.
  void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& problem) {
    std::string p = put("bad.safetensors", bytes);
    EXPECT_EQ(error_of([&] { read_safetensors(p); }), p + ": " + problem);
    EXPECT_EQ(error_of([&] { read_safetensors_header(p); }), p + ": " + problem);
    EXPECT_EQ(error_of([&] { parse_safetensors(bytes.data(), bytes.size(), "mem"); }), "mem: " + problem);
  }

  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

StFile sample_file() {
  StFile f;
  f.metadata = {{"format", "pt"}, {"epoch", "3"}, {"note", "ünïcode \"quoted\"\n"}};
  f.tensors["conv.weight"] = st_entry<float>({2, 1, 3, 3}, std::vector<float>{
      0.f, 1.f, -2.5f, 3e-8f, 1e30f, -0.f, 7.f, 8.f, 9.f, 10.f, 11.f, 12.f, 13.f, 14.f, 15.f, 16.f, 17.f, 18.f});
  f.tensors["lr"] = st_entry<double>({}, std::vector<double>{0.1});  // 0-d scalar
  f.tensors["empty"] = st_entry<float>({0, 5}, std::vector<float>{});
  f.tensors["step"] = st_entry<int64_t>({1}, std::vector<int64_t>{-(int64_t(1) << 40)});
  f.tensors["idx"] = st_entry<int32_t>({5}, std::vector<int32_t>{1, -1, 7, 11, 13});
  f.tensors["mask"] = st_entry<uint8_t>({7}, std::vector<uint8_t>{1, 0, 0, 1, 1, 0, 1});
  f.tensors["u16"] = st_entry<uint16_t>({3, 1}, std::vector<uint16_t>{0, 1, 65535});
  StEntry half;
  half.dtype = "BF16";
  half.shape = {2};
  half.data = {0x80, 0x3F, 0x00, 0xC0};  // 1.0, -2.0
  f.tensors["half"] = half;
  return f;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

void expect_same(const StFile& a, const StFile& b) {
  EXPECT_EQ(a.metadata, b.metadata);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, e] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(name)) << name;
    const StEntry& o = b.tensors.at(name);
    EXPECT_EQ(e.dtype, o.dtype) << name;
    EXPECT_EQ(e.shape, o.shape) << name;
    EXPECT_EQ(e.data, o.data) << name;
  }
}

TEST_F(SafetensorsTest, RoundTripDtypesShapesAndMetadata) {
  StFile f = sample_file();
  std::string p = path("ckpt.safetensors");
  write_safetensors(p, f);
  StFile back = read_safetensors(p);
  expect_same(f, back);
  EXPECT_EQ(back.tensors.at("lr").shape.size(), 0u);
  EXPECT_EQ(back.tensors.at("lr").numel(), 1);
  EXPECT_EQ(st_values<double>(back.tensors.at("lr"))[0], 0.1);
  EXPECT_EQ(back.tensors.at("empty").numel(), 0);
  EXPECT_TRUE(back.tensors.at("empty").data.empty());
  EXPECT_EQ(st_values<int64_t>(back.tensors.at("step"))[0], -(int64_t(1) << 40));
  std::vector<float> w = st_values<float>(back.tensors.at("conv.weight"));
  EXPECT_EQ(w[4], 1e30f);
  EXPECT_TRUE(std::signbit(w[5]));
  EXPECT_EQ(error_of([&] { st_values<float>(back.tensors.at("lr"), "lr"); }), "lr has dtype F64, expected F32");
  // In-memory parse agrees with the file reader.
  std::vector<uint8_t> bytes = serialize_safetensors(f);
  expect_same(f, parse_safetensors(bytes.data(), bytes.size(), "mem"));
}

TEST_F(SafetensorsTest, EmptyFileWithoutTensorsOrMetadata) {
  std::string p = path("none.safetensors");
  write_safetensors(p, StFile{});
  std::vector<uint8_t> bytes = read_file_bytes(p);
  std::vector<uint8_t> expected = raw_file("{}      ", 0);  // padded to 8
  EXPECT_EQ(bytes, expected);
  StFile back = read_safetensors(p);
  EXPECT_TRUE(back.tensors.empty());
  EXPECT_TRUE(back.metadata.empty());
}

TEST_F(SafetensorsTest, DeterministicBytesAndAlignedLayout) {
  StFile a = sample_file();
  // Same content built in another insertion order.
  StFile b;
  for (auto it = a.tensors.rbegin(); it != a.tensors.rend(); ++it) b.tensors.insert(*it);
  for (auto it = a.metadata.rbegin(); it != a.metadata.rend(); ++it) b.metadata.insert(*it);
  write_safetensors(path("a.safetensors"), a);
  write_safetensors(path("b.safetensors"), b);
  std::vector<uint8_t> fa = read_file_bytes(path("a.safetensors"));
  EXPECT_EQ(fa, read_file_bytes(path("b.safetensors")));
  EXPECT_EQ(fa, serialize_safetensors(a));

  StHeader h = read_safetensors_header(path("a.safetensors"));
  EXPECT_EQ(h.header_size % 8, 0u);
  EXPECT_EQ(8 + h.header_size + h.data_size, fa.size());
  EXPECT_EQ(h.metadata, a.metadata);
  ASSERT_EQ(h.tensors.size(), a.tensors.size());
  for (const auto& [name, info] : h.tensors) {
    EXPECT_EQ(info.begin % st_dtype_size(info.dtype), 0u) << name << " is misaligned";
    EXPECT_EQ(info.shape, a.tensors.at(name).shape) << name;
    EXPECT_EQ(info.end - info.begin, a.tensors.at(name).data.size()) << name;
  }
  // Reverse dtype-enum order (I64 before F64 before F32 ...), then name, as the reference writer orders them.
  EXPECT_EQ(h.tensors.at("step").begin, 0u);
  EXPECT_EQ(h.tensors.at("lr").begin, 8u);
  EXPECT_EQ(h.tensors.at("conv.weight").begin, 16u);
  // The header is compact JSON with __metadata__ first.
  std::string head(fa.begin() + 8, fa.begin() + 8 + 16);
  EXPECT_EQ(head, "{\"__metadata__\":");
}

TEST_F(SafetensorsTest, GoldenFileFromReferenceLayoutWriter) {
  std::string p = std::string(SPARROW_SOURCE_DIR) + "/tests/fixtures/st_golden.safetensors";
  StFile g = read_safetensors(p);
  EXPECT_EQ(g.metadata.at("format"), "pt");
  EXPECT_EQ(g.metadata.at("note"), "sparrow golden \xC3\xBC \"quoted\" back\\slash");
  ASSERT_EQ(g.tensors.size(), 9u);

  const StEntry& a = g.tensors.at("a.f32");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(st_values<float>(a), (std::vector<float>{0.5f, -1.25f, 3.0f, 100.0f, -0.0078125f, 65504.0f}));
  const StEntry& b = g.tensors.at("b.f64_scalar");
  EXPECT_TRUE(b.shape.empty());
  EXPECT_EQ(st_values<double>(b), (std::vector<double>{3.141592653589793}));
  EXPECT_EQ(st_values<int64_t>(g.tensors.at("c.i64")), (std::vector<int64_t>{-1, 0, (int64_t(1) << 40) + 7}));
  EXPECT_EQ(g.tensors.at("d.i32").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(st_values<int32_t>(g.tensors.at("d.i32")), (std::vector<int32_t>{1, -2, 3, -4}));
  EXPECT_EQ(st_values<uint8_t>(g.tensors.at("e.u8")), (std::vector<uint8_t>{0, 1, 127, 128, 255}));
  EXPECT_EQ(g.tensors.at("f.f16").dtype, "F16");
  EXPECT_EQ(g.tensors.at("f.f16").data, (std::vector<uint8_t>{0x00, 0x3C, 0x00, 0xC0}));
  EXPECT_EQ(g.tensors.at("g.bool").dtype, "BOOL");
  EXPECT_EQ(g.tensors.at("g.bool").data, (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(g.tensors.at("h.empty").shape, (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(g.tensors.at("h.empty").data.empty());
  EXPECT_EQ(g.tensors.at("layer.0.weight").shape, (std::vector<int64_t>{1, 1, 1, 3}));
  EXPECT_EQ(st_values<float>(g.tensors.at("layer.0.weight")), (std::vector<float>{1.f, 2.f, 4.f}));

  // sparrow's writer reproduces the reference layout byte for byte.
  EXPECT_EQ(serialize_safetensors(g), read_file_bytes(p));
}

// The PyTorch fixture the engine tests use (tests/fixtures/make_torch_golden.py): it loads, has the names,
// dtypes and shapes the engine expects, and re-serialises byte for byte.
TEST_F(SafetensorsTest, TorchGoldenFixtureLoads) {
  std::string p = std::string(SPARROW_SOURCE_DIR) + "/tests/fixtures/torch_resnet8_golden.safetensors";
  StFile g = read_safetensors(p);
  EXPECT_EQ(g.metadata.at("model"), "resnet8");
  EXPECT_EQ(g.metadata.at("in_channels"), "3");
  EXPECT_EQ(g.metadata.at("widths"), "8,16,32");
  EXPECT_EQ(g.tensors.at("stem.0.weight").shape, (std::vector<int64_t>{8, 3, 3, 3}));
  EXPECT_EQ(g.tensors.at("blocks.2.c2.weight").shape, (std::vector<int64_t>{32, 32, 3, 3}));
  EXPECT_EQ(g.tensors.at("fc.weight").shape, (std::vector<int64_t>{10, 32}));
  EXPECT_EQ(g.tensors.at("input.x").shape, (std::vector<int64_t>{4, 3, 16, 16}));
  EXPECT_EQ(g.tensors.at("output.logits_train").shape, (std::vector<int64_t>{4, 10}));
  EXPECT_TRUE(g.tensors.at("output.loss").shape.empty());
  EXPECT_EQ(st_values<int64_t>(g.tensors.at("stem.1.num_batches_tracked")), std::vector<int64_t>{0});
  for (int64_t label : st_values<int64_t>(g.tensors.at("input.y"))) EXPECT_TRUE(label >= 0 && label < 10);
  float loss = st_values<float>(g.tensors.at("output.loss"))[0];
  EXPECT_TRUE(loss > 0.5f && loss < 10.f) << loss;
  int params = 0, stats = 0;
  for (const auto& [name, e] : g.tensors) {
    if (e.dtype == "F32") {
      for (float v : st_values<float>(e, name)) ASSERT_TRUE(std::isfinite(v)) << name;
    }
    if (name.rfind("grad.", 0) == 0 || name.rfind("after.", 0) == 0 || name.rfind("input.", 0) == 0 ||
        name.rfind("output.", 0) == 0)
      continue;
    bool is_param = ends_with(name, ".weight") || ends_with(name, ".bias");
    bool is_stat = ends_with(name, ".running_mean") || ends_with(name, ".running_var");
    if (is_param) {
      ++params;
      ASSERT_TRUE(g.tensors.count("grad." + name)) << name;
      EXPECT_EQ(g.tensors.at("grad." + name).shape, e.shape) << name;
    }
    if (is_stat) {
      ++stats;
      ASSERT_TRUE(g.tensors.count("after." + name)) << name;
      EXPECT_NE(g.tensors.at("after." + name).data, e.data) << name << " did not move in train mode";
    }
  }
  EXPECT_EQ(params, 23);  // 7 conv weights, 7 BatchNorms x (weight, bias), fc weight and bias
  EXPECT_EQ(stats, 14);   // 7 BatchNorms x (running_mean, running_var)
  EXPECT_EQ(serialize_safetensors(g), read_file_bytes(p));
}

TEST_F(SafetensorsTest, RejectsTruncatedFiles) {
  expect_rejected({1, 0, 0, 0, 0},
                  "file is 5 bytes, too short for the 8-byte header length (truncated or not a safetensors file)");
  // A valid file cut inside its data section.
  StFile f;
  f.tensors["fc.weight"] = st_entry<float>({10, 10}, std::vector<float>(100, 1.f));
  std::vector<uint8_t> bytes = serialize_safetensors(f);
  bytes.resize(bytes.size() - 200);
  expect_rejected(bytes, "tensor 'fc.weight' data_offsets [0, 400] exceed the 200-byte data section");
}

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  expect_rejected(raw_file("{}", 10, 1000),
                  "header length 1000 exceeds the 12 bytes after the length field (truncated file)");
  expect_rejected(raw_file("{}", 0, int64_t(1) << 62),
                  "header length 4611686018427387904 exceeds the 100000000-byte limit (corrupt or not a "
                  "safetensors file)");
  expect_rejected(raw_file("", 0), "header length 0 is too short for a JSON object");
}

TEST_F(SafetensorsTest, RejectsNonJsonHeader) {
  std::string p = put("bad.safetensors", raw_file("{not json}", 0));
  std::string msg = error_of([&] { read_safetensors(p); });
  EXPECT_EQ(msg.rfind(p + ": header is not valid JSON: ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  expect_rejected(raw_file("[1, 2]  ", 0), "header does not start with '{' (not a safetensors file)");
  // Invalid UTF-8 inside a JSON string.
  std::string bad_utf8 = "{\"\xff\":1}";
  msg = error_of([&] { read_safetensors(put("u.safetensors", raw_file(bad_utf8, 0))); });
  EXPECT_NE(msg.find("header is not valid JSON"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, RejectsBadEntries) {
  const std::string w = "{\"w\":{\"dtype\":";
  expect_rejected(raw_file(w + "\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
                  "tensor 'w' has unknown dtype 'F33'");
  expect_rejected(raw_file(w + "\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1),
                  "tensor 'w' has dtype F4, which packs elements below a byte and is not supported");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20),
                  "tensor 'w' of dtype F32 and shape [2, 3] needs 24 bytes but data_offsets [0, 20] hold 20");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0),
                  "tensor 'w' shape has negative value -3");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2.5],\"data_offsets\":[0,0]}}", 0),
                  "tensor 'w' shape has non-integer value 2.5");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}", 16),
                  "tensor 'w' shape [4611686018427387904, 4] of F32 overflows a 64-bit byte count");
  expect_rejected(raw_file(w + "\"U8\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}", 16),
                  "tensor 'w' shape [4611686018427387904, 4] of U8 overflows a 64-bit byte count");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8),
                  "tensor 'w' data_offsets [8, 0] end before they begin");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8),
                  "tensor 'w' data_offsets is not a [begin, end] pair: [0]");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8),
                  "tensor 'w' has unknown field 'extra'");
  expect_rejected(raw_file(w + "\"F32\",\"shape\":[2]}}", 8), "tensor 'w' needs dtype, shape and data_offsets");
  expect_rejected(raw_file("{\"w\":[1,2]}", 0), "tensor 'w' entry is not an object");
  expect_rejected(raw_file("{\"__metadata__\":{\"k\":1}}", 0), "__metadata__ value of 'k' is not a string: 1");
  expect_rejected(raw_file("{\"a\":{},\"a\":{}}", 0), "header names 'a' twice");
}

TEST_F(SafetensorsTest, RejectsOverlapsGapsAndLeftovers) {
  auto f32 = [](const std::string& name, int n, int b) {
    return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) + "],\"data_offsets\":[" +
           std::to_string(b) + "," + std::to_string(b + 4 * n) + "]}";
  };
  expect_rejected(raw_file("{" + f32("a", 2, 0) + "," + f32("b", 2, 4) + "}", 12),
                  "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]");
  // Two tensors claiming the same bytes.
  expect_rejected(raw_file("{" + f32("a", 2, 0) + "," + f32("b", 2, 0) + "}", 8),
                  "tensor 'b' data_offsets [0, 8] overlap tensor 'a' [0, 8]");
  expect_rejected(raw_file("{" + f32("a", 1, 0) + "," + f32("b", 1, 8) + "}", 12),
                  "bytes [4, 8] of the data section belong to no tensor (gap before tensor 'b')");
  expect_rejected(raw_file("{" + f32("a", 1, 0) + "}", 10),
                  "the last 6 bytes of the 10-byte data section belong to no tensor");
  // Empty tensors may sit at a boundary, not inside another tensor.
  std::vector<uint8_t> ok = raw_file("{" + f32("a", 1, 0) + "," + f32("z", 0, 4) + "}", 4);
  EXPECT_EQ(parse_safetensors(ok.data(), ok.size(), "mem").tensors.size(), 2u);
  expect_rejected(raw_file("{" + f32("a", 2, 0) + "," + f32("z", 0, 4) + "}", 8),
                  "tensor 'z' data_offsets [4, 4] overlap tensor 'a' [0, 8]");
}

// A header of 100000 nested arrays parsed fine, then the error path quoted it with a recursive JSON dump
// deep enough to exhaust the stack; nesting is now bounded while parsing.
TEST_F(SafetensorsTest, RejectsDeeplyNestedHeaders) {
  const int depth = 100000;
  std::string h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" + std::string(depth, '[') +
                  std::string(depth, ']') + "}}";
  expect_rejected(raw_file(h, 4), "header nests JSON more than 8 levels deep (not a safetensors header)");
  expect_rejected(raw_file("{\"__metadata__\":{\"a\":[[[[[[[[[[1]]]]]]]]]]}}", 0),
                  "header nests JSON more than 8 levels deep (not a safetensors header)");
}

// Every committed fuzz corpus file (tests/fuzz/corpus/fuzz_safetensors: valid seeds and past crashes) is
// read by both readers: each parses or fails with a one-line Error, and both readers agree.
TEST_F(SafetensorsTest, EveryFuzzCorpusFileParsesOrFailsCleanly) {
  const std::string dir = std::string(SPARROW_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_safetensors";
  int files = 0, parsed = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string p = e.path().string();
    const std::vector<uint8_t> bytes = read_file_bytes(p);
    const std::string mem = error_of([&] { parse_safetensors(bytes.data(), bytes.size(), p); });
    const std::string disk = error_of([&] { read_safetensors(p); });
    EXPECT_EQ(mem, disk) << p;
    EXPECT_EQ(mem.find('\n'), std::string::npos) << mem;
    parsed += mem.empty();
    ++files;
  }
  EXPECT_GE(files, 4);
  EXPECT_GE(parsed, 4);  // the seeds are valid files
}

TEST_F(SafetensorsTest, MissingFile) {
  std::string p = path("missing.safetensors");
  EXPECT_EQ(error_of([&] { read_safetensors(p); }), "cannot open " + p + ": No such file or directory");
  EXPECT_EQ(error_of([&] { read_safetensors_header(p); }), "cannot open " + p + ": No such file or directory");
  EXPECT_EQ(error_of([&] { read_safetensors(dir_); }), dir_ + ": not a regular file");
}

TEST_F(SafetensorsTest, WriterRejectsInconsistentEntries) {
  std::string p = path("w.safetensors");
  StFile f;
  f.tensors["w"] = StEntry{"F32", {2, 3}, std::vector<uint8_t>(20)};
  EXPECT_EQ(error_of([&] { write_safetensors(p, f); }),
            p + ": tensor 'w' of dtype F32 and shape [2, 3] needs 24 bytes but holds 20");
  f.tensors["w"] = StEntry{"F99", {1}, std::vector<uint8_t>(4)};
  EXPECT_EQ(error_of([&] { write_safetensors(p, f); }), p + ": tensor 'w' has unsupported dtype 'F99'");
  f.tensors.clear();
  f.tensors["__metadata__"] = StEntry{"U8", {1}, {0}};
  EXPECT_EQ(error_of([&] { write_safetensors(p, f); }), p + ": a tensor cannot be named __metadata__");
  f.tensors.clear();
  f.metadata["k"] = "\xff\xfe";
  std::string msg = error_of([&] { write_safetensors(p, f); });
  EXPECT_EQ(msg.rfind(p + ": a tensor name or metadata string is not valid UTF-8", 0), 0u) << msg;
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(listing().empty());
}

TEST_F(SafetensorsTest, FailedWriteIntoMissingDirectoryLeavesNothing) {
  std::string p = path("nodir/ckpt.safetensors");
  std::string msg = error_of([&] { write_safetensors(p, sample_file()); });
  EXPECT_EQ(msg.rfind(p + ": cannot create temporary file " + p + ".tmp.", 0), 0u) << msg;
  EXPECT_NE(msg.find(": No such file or directory"), std::string::npos) << msg;
  EXPECT_TRUE(listing().empty());
}

TEST_F(SafetensorsTest, FailedRenameKeepsDestinationAndRemovesTemp) {
  // The destination is a directory: rename(2) refuses to replace it.
  std::string p = path("ckpt.safetensors");
  fs::create_directory(p);
  std::string msg = error_of([&] { write_safetensors(p, sample_file()); });
  EXPECT_EQ(msg.rfind(p + ": cannot rename " + p + ".tmp.", 0), 0u) << msg;
  EXPECT_NE(msg.find("Is a directory"), std::string::npos) << msg;
  EXPECT_TRUE(fs::is_directory(p));
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsTest, AbandonedAtomicFileRemovesTemp) {
  std::string p = path("x.bin");
  write_file_atomic(p, std::string("old"));
  {
    AtomicFile f(p);
    f.write("new content", 11);
    EXPECT_TRUE(fs::exists(f.temp_path()));
  }  // destroyed without commit()
  EXPECT_EQ(read_file_text(p), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"x.bin"});
}

// A writer SIGKILLed mid-write leaves "<path>.tmp.<pid>.<n>"; remove_stale_temp_files deletes those of dead
// processes only: a live writer's temp file, the file itself and look-alike names stay.
TEST_F(SafetensorsTest, StaleTempFilesOfDeadWritersAreRemoved) {
  const std::string p = path("ck.safetensors");
  write_file_atomic(p, std::string("checkpoint"));
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  waitpid(dead, nullptr, 0);
  const std::string mine = std::to_string(getpid()), gone = std::to_string(dead);
  const std::vector<std::string> names = {
      "ck.safetensors.tmp." + gone + ".0",  "ck.safetensors.tmp." + gone + ".7",  "ck.safetensors.tmp." + mine + ".3",
      "ck.safetensors.tmp.x.1",             "other.safetensors.tmp." + gone + ".0", "ck.safetensors.tmp." + gone};
  for (const std::string& n : names)
    write_file_atomic(path(n), std::string("partial"));
  EXPECT_EQ(remove_stale_temp_files(p), 2);
  std::vector<std::string> kept = {"ck.safetensors", "ck.safetensors.tmp." + gone, "ck.safetensors.tmp." + mine + ".3",
                                   "ck.safetensors.tmp.x.1", "other.safetensors.tmp." + gone + ".0"};
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(listing(), kept);
  EXPECT_EQ(read_file_text(p), "checkpoint");
  EXPECT_EQ(remove_stale_temp_files(path("missing/none.safetensors")), 0);
}

// A full disk, simulated: the child process may only write 4 KiB per file (RLIMIT_FSIZE, SIGXFSZ ignored so
// write(2) returns EFBIG). The old checkpoint must survive and the temp file must be gone.
TEST_F(SafetensorsTest, FailedWriteOnFileSizeLimitKeepsOldFile) {
  std::string p = path("ckpt.safetensors");
  StFile small;
  small.tensors["w"] = st_entry<float>({4}, std::vector<float>{1, 2, 3, 4});
  write_safetensors(p, small);
  std::vector<uint8_t> before = read_file_bytes(p);

  StFile big;
  big.tensors["w"] = st_entry<float>({64, 64}, std::vector<float>(4096, 0.5f));
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  std::fflush(nullptr);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {};
    ::getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = 4096;
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(2);
    std::string msg = error_of([&] { write_safetensors(p, big); });
    ssize_t n = ::write(pipefd[1], msg.data(), msg.size());
    ::_exit(n == static_cast<ssize_t>(msg.size()) && !msg.empty() ? 0 : 1);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0) msg.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  ASSERT_EQ(WEXITSTATUS(status), 0) << "the write did not fail in the child; message: " << msg;
  EXPECT_EQ(msg.rfind(p + ": write to temporary file " + p + ".tmp.", 0), 0u) << msg;
  EXPECT_NE(msg.find("failed: File too large"), std::string::npos) << msg;
  EXPECT_EQ(read_file_bytes(p), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
  expect_same(small, read_safetensors(p));
}

TEST_F(SafetensorsTest, OverwriteReplacesWholeFile) {
  std::string p = path("ckpt.safetensors");
  write_safetensors(p, sample_file());
  StFile small;
  small.tensors["w"] = st_entry<int32_t>({1}, std::vector<int32_t>{42});
  write_safetensors(p, small);
  expect_same(small, read_safetensors(p));
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST(SafetensorsDtype, SizesAndNumel) {
  EXPECT_EQ(st_dtype_size("F32"), 4u);
  EXPECT_EQ(st_dtype_size("BF16"), 2u);
  EXPECT_EQ(st_dtype_size("I64"), 8u);
  EXPECT_EQ(st_dtype_size("BOOL"), 1u);
  EXPECT_EQ(st_dtype_size("F4"), 0u);
  EXPECT_EQ(st_dtype_size("f32"), 0u);
  EXPECT_EQ(st_numel({}), 1);
  EXPECT_EQ(st_numel({3, 0, 5}), 0);
  EXPECT_EQ(st_numel({7, 11, 13}), 1001);
  EXPECT_EQ(error_of([] { st_numel({int64_t(1) << 62, 4}); }), "shape [4611686018427387904, 4] overflows int64");
}

}  // namespace
}  // namespace sparrow
