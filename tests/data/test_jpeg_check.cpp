// check_jpeg_stream (engine/data/jpeg_check.cpp), the walk between untrusted JPEG files and stb_image:
// valid files of every coding the loader meets pass and decode to the right pixels, and every way a scan
// could leave stb decoding bits that are not in the file is a one-line error naming the scan and MCU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/parse.h"
#include "tests/data/data_test_util.h"

using namespace sparrow;
using sparrow_test::expect_error;
using sparrow_test::read_all;

namespace {

const std::string kCorpus = std::string(SPARROW_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_tiny_imagenet/";

std::vector<uint8_t> corpus_file(const std::string& name) {
  std::vector<uint8_t> b = read_all(kCorpus + name);
  EXPECT_FALSE(b.empty()) << kCorpus + name;
  return b;
}

std::vector<uint8_t> decode(const std::vector<uint8_t>& b, const std::string& name, int side = 64) {
  std::vector<uint8_t> px(size_t(3 * side * side));
  decode_image_bytes(b.data(), b.size(), name, 1 << 24, side, px.data());
  return px;
}

void check(const std::vector<uint8_t>& b, const std::string& name, int64_t max_pixels = 1 << 24) {
  check_jpeg_stream(b.data(), b.size(), name, max_pixels);
}

// The entropy-coded data of each scan, found independently of the code under test: from the end of the
// SOS segment to the first marker that is not a stuffed byte (FF 00) or a restart marker (FF D0..D7).
std::vector<std::pair<size_t, size_t>> scan_ranges(const std::vector<uint8_t>& b) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t p = 2;
  while (p + 4 <= b.size() && b[p] == 0xFF) {
    const int m = b[p + 1];
    if (m == 0xD9) break;
    const size_t len = size_t(b[p + 2]) << 8 | b[p + 3];
    p += 2 + len;
    if (m != 0xDA) continue;
    size_t q = p;
    while (q + 1 < b.size() && !(b[q] == 0xFF && b[q + 1] != 0x00 && (b[q + 1] < 0xD0 || b[q + 1] > 0xD7))) ++q;
    out.emplace_back(p, q);
    p = q;
  }
  return out;
}

// A hand-built grayscale JPEG of `blocks`×`blocks` 8×8 blocks: a quantization table of ones, a DC table
// whose only code is '0' (difference category `dc_symbol`, 0 by default) and an AC table whose only code
// is '0' (symbol 00: end of block, or an end-of-band run of 1 in a progressive scan). So with the
// defaults each block is the two bits 00 and decodes to mid-gray: 128 everywhere.
struct TinyScan {
  int ss = 0, se = 63, approx = 0;     // spectral selection and Ah << 4 | Al
  std::vector<uint8_t> data = {0x3F};  // 00 then 1-bits padding to the byte
};
struct Tiny {
  int blocks = 1;
  int components = 1;
  int restart_interval = 0;
  int scan_dc_table = 0;
  int quant_table = 0;
  int dc_symbol = 0;
  int frame_marker = 0xC0;
  std::vector<std::vector<uint8_t>> extra_segments;  // whole segments, before the first scan
  std::vector<TinyScan> scans = {TinyScan{}};
  bool eoi = true;
  std::vector<uint8_t>& data() { return scans[0].data; }
};

void segment(std::vector<uint8_t>& j, int marker, const std::vector<uint8_t>& body) {
  const size_t len = body.size() + 2;
  j.insert(j.end(), {0xFF, uint8_t(marker), uint8_t(len >> 8), uint8_t(len & 0xFF)});
  j.insert(j.end(), body.begin(), body.end());
}

std::vector<uint8_t> tiny_jpeg(const Tiny& t) {
  std::vector<uint8_t> j = {0xFF, 0xD8};
  std::vector<uint8_t> dqt = {0x00};
  dqt.resize(65, 1);
  segment(j, 0xDB, dqt);
  const uint8_t side = uint8_t(8 * t.blocks);
  std::vector<uint8_t> sof = {8, 0, side, 0, side, uint8_t(t.components)};
  for (int c = 1; c <= t.components; ++c) sof.insert(sof.end(), {uint8_t(c), 0x11, uint8_t(t.quant_table)});
  segment(j, t.frame_marker, sof);
  std::vector<uint8_t> dht(18, 0);
  dht[1] = 1;  // one code of length 1
  dht[17] = uint8_t(t.dc_symbol);
  segment(j, 0xC4, dht);
  dht[0] = 0x10;  // AC table 0: symbol 0x00
  dht[17] = 0;
  segment(j, 0xC4, dht);
  if (t.restart_interval) segment(j, 0xDD, {0, uint8_t(t.restart_interval)});
  for (const auto& s : t.extra_segments) j.insert(j.end(), s.begin(), s.end());
  for (const TinyScan& s : t.scans) {
    segment(j, 0xDA, {1, 1, uint8_t(t.scan_dc_table << 4), uint8_t(s.ss), uint8_t(s.se), uint8_t(s.approx)});
    j.insert(j.end(), s.data.begin(), s.data.end());
  }
  if (t.eoi) j.insert(j.end(), {0xFF, 0xD9});
  return j;
}

// Entropy-coded bytes from a string of '0'/'1': padded with 1-bits, FF bytes stuffed with 00.
std::vector<uint8_t> pack_bits(std::string bits) {
  while (bits.size() % 8) bits += '1';
  std::vector<uint8_t> out;
  for (size_t i = 0; i < bits.size(); i += 8) {
    out.push_back(uint8_t(std::stoi(bits.substr(i, 8), nullptr, 2)));
    if (out.back() == 0xFF) out.push_back(0x00);
  }
  return out;
}

const std::vector<std::string> kTranscodes420 = {"cjpeg-420-progressive.jpg", "cjpeg-420-restart1.jpg",
                                                 "cjpeg-420-progressive-restart1.jpg"};
const std::vector<std::string> kTranscodesGray = {"cjpeg-gray-restart3b.jpg", "cjpeg-gray-progressive-restart2b.jpg"};

}  // namespace

// jpegtran rewrites a JPEG without touching its DCT coefficients, so the baseline file and its progressive
// and restart-interval forms must decode to identical pixels: this checks that the walk lets each coding
// through and that stb then reads the same image from it (a misread scan would change pixels).
TEST(JpegCheck, LosslessTranscodesPassAndDecodeToTheSamePixels) {
  for (const auto& family : {std::make_pair(std::string("cjpeg-420.jpg"), kTranscodes420),
                             std::make_pair(std::string("cjpeg-gray.jpg"), kTranscodesGray)}) {
    const std::vector<uint8_t> ref = decode(corpus_file(family.first), family.first);
    const auto [lo, hi] = std::minmax_element(ref.begin(), ref.end());
    EXPECT_GT(int(*hi) - int(*lo), 100) << family.first << ": the test image should have content";
    for (const std::string& name : family.second) EXPECT_EQ(decode(corpus_file(name), name), ref) << name;
  }
}

// Cut a scan anywhere (and end the file there with EOI): stb_image would pad the missing bits with zeros
// and decode a made-up image; the walk must name the scan that was cut. Every byte position of every scan
// of baseline, progressive, restart-interval and grayscale files.
TEST(JpegCheck, EveryCutInsideAScanIsAnErrorNamingThatScan) {
  std::vector<std::string> files = {"cjpeg-420.jpg", "cjpeg-gray.jpg", "baseline.jpg", "progressive.jpg"};
  files.insert(files.end(), kTranscodes420.begin(), kTranscodes420.end());
  files.insert(files.end(), kTranscodesGray.begin(), kTranscodesGray.end());
  for (const std::string& name : files) {
    const std::vector<uint8_t> b = corpus_file(name);
    EXPECT_NO_THROW(check(b, name));
    const auto scans = scan_ranges(b);
    ASSERT_FALSE(scans.empty()) << name;
    int cuts = 0, caught = 0;
    for (size_t s = 0; s < scans.size(); ++s) {
      for (size_t cut = scans[s].first; cut < scans[s].second; ++cut) {
        std::vector<uint8_t> t(b.begin(), b.begin() + std::ptrdiff_t(cut));
        t.insert(t.end(), {0xFF, 0xD9});
        ++cuts;
        try {
          check(t, name);
        } catch (const Error& e) {
          const std::string msg = e.what();
          if (msg.find("corrupt JPEG (scan " + std::to_string(s + 1) + ": ") != std::string::npos) ++caught;
          else ADD_FAILURE() << name << " cut at " << cut << " (scan " << s + 1 << "): " << msg;
        }
      }
    }
    EXPECT_GT(cuts, 100) << name;  // every file has at least 149 bytes of scan data
    EXPECT_EQ(caught, cuts) << name << ": " << scans.size() << " scans";
  }
}

// stb_image stops decoding a scan, silently, where an expected restart marker is missing; the walk fails.
// Any RSTn is accepted in any order, as stb accepts it. (-restart 1 is one MCU row: 4 of the 16 MCUs.)
TEST(JpegCheck, RestartMarkersMustEndEveryInterval) {
  const std::vector<uint8_t> b = corpus_file("cjpeg-420-restart1.jpg");
  const auto scans = scan_ranges(b);
  ASSERT_EQ(scans.size(), 1u);
  size_t rst = scans[0].first;
  while (rst + 1 < scans[0].second && !(b[rst] == 0xFF && b[rst + 1] >= 0xD0 && b[rst + 1] <= 0xD7)) ++rst;
  ASSERT_LT(rst + 1, scans[0].second) << "no restart marker in the file";
  std::vector<uint8_t> removed = b;
  removed.erase(removed.begin() + std::ptrdiff_t(rst), removed.begin() + std::ptrdiff_t(rst + 2));
  expect_error([&] { check(removed, "r.jpg"); }, {"r.jpg", "scan 1: no restart marker after MCU 4 of 16"});
  std::vector<uint8_t> renumbered = b;
  renumbered[rst + 1] = 0xD5;
  EXPECT_NO_THROW(check(renumbered, "r.jpg"));
  EXPECT_EQ(decode(renumbered, "r.jpg"), decode(b, "r.jpg"));

  Tiny t;
  t.blocks = 2;
  t.restart_interval = 1;
  t.data() = {0x3F, 0xFF, 0xD0, 0x3F, 0xFF, 0xD1, 0x3F, 0xFF, 0xD2, 0x3F};
  EXPECT_EQ(decode(tiny_jpeg(t), "t.jpg", 16), std::vector<uint8_t>(3 * 16 * 16, 128));
  t.data() = {0x3F, 0x3F, 0x3F, 0x3F};
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "scan 1: no restart marker after MCU 1 of 4"});
}

// The hand-built file decodes to the analytic result, and each single defect in it is its own error.
TEST(JpegCheck, HandBuiltFileAndEachOfItsDefects) {
  const std::vector<uint8_t> px = decode(tiny_jpeg(Tiny{}), "t.jpg", 8);
  EXPECT_EQ(px, std::vector<uint8_t>(3 * 8 * 8, 128));

  Tiny t;
  t.data() = {};
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); },
               {"t.jpg", "scan 1: the entropy-coded data ends in MCU 1 of 1 (a marker cuts it short)"});
  t = Tiny{};
  t.data() = {0xFE, 0xFE};  // 16 one-bits before the first zero: no code of the DC table
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); },
               {"t.jpg", "scan 1: a Huffman code its table does not have, in MCU 1 of 1"});
  t = Tiny{};
  t.eoi = false;
  t.data() = {0x00};  // one block, then the file ends: 6 bits and no marker
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "scan 1: the file ends without a marker"});
  t.blocks = 3;  // 9 blocks need 18 bits; the file has 8
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); },
               {"t.jpg", "ends in MCU 5 of 9 (the file is truncated)"});
  t = Tiny{};
  t.data() = {0x3F, 0x12};  // a byte after the last block: stb skips to the next FF and fails or not by chance
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "scan 1: data left after its last MCU"});
  t.eoi = false;
  t.data() = {0x3F, 0xFF, 0xFF, 0xD9};  // fill bytes: stb would take the second FF for the marker and fail
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "scan 1: fill bytes before the marker after it"});
  t = Tiny{};
  t.scan_dc_table = 1;
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "a Huffman table that was never defined"});
  t = Tiny{};
  t.quant_table = 2;
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); },
               {"t.jpg", "component 1 uses quantization table 2, which was never defined"});
  t = Tiny{};
  t.frame_marker = 0xC3;  // lossless: stb_image has no decoder for it
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "unsupported JPEG coding (frame marker FFC3"});
  t = Tiny{};
  t.components = 3;  // the only scan covers component 1: stb would show 2 and 3 from uninitialised memory
  expect_error([&] { check(tiny_jpeg(t), "t.jpg"); }, {"t.jpg", "component 2 is in no scan"});
  expect_error([&] { check(tiny_jpeg(Tiny{}), "t.jpg", 63); }, {"t.jpg", "8x8 exceeds the size limit of 63 pixels"});
  EXPECT_NO_THROW(check(tiny_jpeg(Tiny{}), "t.jpg", 64));
  // Not a JPEG at all: left to the PNG check and to stb's format detection.
  EXPECT_NO_THROW(check({0x89, 'P', 'N', 'G'}, "x.png"));
}

// A progressive file in four scans (DC first, AC first, DC and AC refinement) decodes to its analytic
// result; an AC scan before the component's first DC scan is an error (stb would take the number of
// correction bits from coefficient memory no scan has written yet).
TEST(JpegCheck, ProgressiveScansInOrderAndOutOfOrder) {
  Tiny t;
  t.frame_marker = 0xC2;
  t.scans = {{0, 0, 0x01, {0x7F}}, {1, 63, 0x01, {0x7F}}, {0, 0, 0x10, {0x7F}}, {1, 63, 0x10, {0x7F}}};
  EXPECT_EQ(decode(tiny_jpeg(t), "p.jpg", 8), std::vector<uint8_t>(3 * 8 * 8, 128));
  t.scans = {{1, 63, 0x00, {0x7F}}, {0, 0, 0x00, {0x7F}}};
  expect_error([&] { check(tiny_jpeg(t), "p.jpg"); }, {"p.jpg", "scan 1 comes before the first DC scan of component 1"});
  t.scans = {{0, 0, 0x10, {0x7F}}, {0, 0, 0x00, {0x7F}}};  // a DC refinement first: the same
  expect_error([&] { check(tiny_jpeg(t), "p.jpg"); }, {"p.jpg", "scan 1 comes before the first DC scan of component 1"});
}

// Two contract breaks found in review of jpeg_check.cpp, each reproduced against stb_image with UBSan:
// a 256th Huffman symbol (stb's fast table keeps symbol indices in a byte, 255 meaning "none", so a short
// code for symbol 255 is decoded as another symbol and the bit position drifts), and a DC predictor
// beyond ±32767 (stb multiplies it by the quantization step in an int: signed overflow).
TEST(JpegCheck, TablesAndCoefficientsStbCannotHold) {
  Tiny t;
  std::vector<uint8_t> dht(1 + 16 + 256, 0);
  dht[0] = 0x01;  // DC table 1: 255 codes of 8 bits and one of 9
  dht[8] = 255;
  dht[9] = 1;
  t.extra_segments = {{}};
  segment(t.extra_segments[0], 0xC4, dht);
  expect_error([&] { check(tiny_jpeg(t), "h.jpg"); }, {"h.jpg", "Huffman table declares 256 codes, at most 255"});

  t = Tiny{};
  t.dc_symbol = 15;  // the DC code '0' means a 15-bit difference
  const std::string block = "0" + std::string(15, '1') + "0";  // +32767, then end of block
  t.data() = pack_bits(block);
  EXPECT_EQ(decode(tiny_jpeg(t), "d.jpg", 8), std::vector<uint8_t>(3 * 8 * 8, 255));  // DC 32767: white
  t.blocks = 2;
  t.data() = pack_bits(block + block + block + block);
  expect_error([&] { check(tiny_jpeg(t), "d.jpg"); }, {"d.jpg", "scan 1: DC coefficient 65534 of component 1 out of range"});
  t.restart_interval = 1;  // the predictor restarts with each interval: in range again
  const auto one = pack_bits(block);
  t.data() = one;
  for (int i = 0; i < 3; ++i) {
    t.data().insert(t.data().end(), {0xFF, uint8_t(0xD0 + i)});
    t.data().insert(t.data().end(), one.begin(), one.end());
  }
  EXPECT_NO_THROW(check(tiny_jpeg(t), "d.jpg"));
}

// Found by fuzz_tiny_imagenet (900 s run): a baseline scan whose data a marker cuts short in MCU 11 of 64.
// stb_image 2.27 read past its buffered bits there and its next refill shifted by 35 (UBSan: shift
// exponent too large). The walk now fails before stb runs.
TEST(FuzzRegressions, JpegScanDataEndingEarlyIsACleanError) {
  const std::vector<uint8_t> b = corpus_file("crash-stb-scan-data-ends-early.jpg");
  std::vector<uint8_t> dst(3 * 64 * 64);
  expect_error([&] { decode_image_bytes(b.data(), b.size(), "evil.jpg", 1 << 24, 64, dst.data()); },
               {"evil.jpg", "corrupt JPEG (scan 1: the entropy-coded data ends in MCU 11 of 64"});
}
