// check_jpeg_stream: a JPEG walk that follows stb_image 2.27's decoder through every marker segment and
// every entropy-coded scan, down to Huffman symbols and the bits stb reads after them, but without
// dequantisation or IDCT. stb_image then only ever decodes files whose scans it can read from their own
// bytes.
//
// Why: stb_image trusts its input more than an untrusted data set allows (each of these was found by
// tests/fuzz/fuzz_tiny_imagenet). A Huffman table declaring more than 256 codes made it write past a
// table; a scan naming a Huffman table no DHT defined made it decode with uninitialised memory; and when
// the entropy-coded data of a scan ends before the scan's last block (a truncated file, or a marker in the
// middle of the data), stb pads with zero bits, and a read of more bits than it had buffered drives its
// bit count negative: the next refill shifts by 32 or more (undefined behaviour) and the image comes out
// silently made up. Here each of those is a one-line error naming the file and the problem.
//
// The rule the walk keeps: whenever it accepts a file, stb reads the same segments from the same
// positions, decodes each scan with the same tables and consumes no bit that is not in the file. Where
// stb itself would fail, the walk may fail first (with a clearer message) or leave the failure to stb;
// it is stricter than stb in a few places (junk bytes between segments, a missing restart marker, which
// stb answers with a partial image) and never more lenient.
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/data/parse.h"

namespace sparrow {

namespace {

// A Huffman table as BITS/HUFFVAL define it, decoded canonically (JPEG spec F.2.2.3): the symbols of
// length L carry the consecutive codes first[L] .. first[L] + count[L] - 1. Codes of up to kFastBits bits
// are also looked up directly: fast[next kFastBits bits] = length << 8 | symbol (0: longer or no code).
constexpr int kFastBits = 9;
struct Huffman {
  bool defined = false;
  int count[17] = {};
  int first[17] = {};
  int index[17] = {};  // position in `values` of the first symbol of length L
  uint8_t values[256] = {};
  uint16_t fast[1 << kFastBits] = {};
};

struct Component {
  int id = 0, h = 1, v = 1, tq = 0;
  int x = 0, y = 0;              // samples of this component (stb's img_comp[].x, .y)
  int coeff_w = 0, coeff_h = 0;  // blocks stored for a progressive frame (whole MCUs)
  int hd = 0, ha = 0;            // Huffman tables of the current scan
  int dc_pred = 0;               // DC predictor, reset at each scan and restart as stb resets it
  // Progressive: per block, bit k set when zig-zag coefficient k is not zero; a row of blocks is
  // allocated when a scan first reaches it, so a huge frame header with little data allocates little.
  std::vector<std::vector<uint64_t>> nonzero;
  bool scanned = false;          // some scan gave it its (DC) coefficients
};

// Reads the entropy-coded bytes of a scan: FF 00 is a data byte FF, FF [FF...] X with X != 0 is a
// marker, which ends the segment. Reading a bit past the marker (or the end of the file) is the failure
// this whole file exists for. Bits are buffered MSB-first in a 64-bit word, refilled a byte at a time.
class ScanBits {
 public:
  ScanBits(const uint8_t* b, size_t size, size_t pos, const std::string& name, const int& scan, const int64_t& mcu,
           int64_t mcus)
      : b_(b), size_(size), pos_(pos), name_(name), scan_(scan), mcu_(mcu), mcus_(mcus) {}

  unsigned bits(int n) {  // n <= 16
    if (n == 0) return 0;
    if (nbits_ < n) refill();
    if (nbits_ < n) fail_ends();
    const unsigned v = unsigned(acc_ >> (64 - n));
    acc_ <<= n;
    nbits_ -= n;
    return v;
  }
  unsigned bit() { return bits(1); }
  // The value of an n-bit magnitude category (F.2.2.1 EXTEND).
  int receive_extend(int n) {
    if (n == 0) return 0;
    const int v = int(bits(n));
    return v < (1 << (n - 1)) ? v - (1 << n) + 1 : v;
  }
  // The next symbol. The 16 bits looked at are zero past the data; a code is taken only when all its
  // bits are data, exactly as reading it bit by bit would.
  int huffman(const Huffman& h) {
    if (nbits_ < 16) refill();
    const unsigned peek = unsigned(acc_ >> 48);
    int len = 0, symbol = -1;
    if (const unsigned f = h.fast[peek >> (16 - kFastBits)]) {
      len = int(f >> 8);
      symbol = int(f & 0xFF);
    } else {
      for (len = kFastBits + 1; len <= 16; ++len) {
        const int code = int(peek >> (16 - len));
        if (code >= h.first[len] && code - h.first[len] < h.count[len]) {
          symbol = h.values[h.index[len] + code - h.first[len]];
          break;
        }
      }
    }
    if (symbol < 0 ? nbits_ < 16 : len > nbits_) fail_ends();
    if (symbol < 0)
      SPARROW_FAIL(name_, ": corrupt JPEG (scan ", scan_, ": a Huffman code its table does not have, in MCU ",
                   mcu_ + 1, " of ", mcus_, ")");
    acc_ <<= len;
    nbits_ -= len;
    return symbol;
  }

  // After the last MCU of a restart interval: only the padding bits of the current byte may be left, and
  // a restart marker must come next. Then the next interval starts after it.
  void restart() {
    SPARROW_CHECK(nbits_ < 8 && next_is_marker() && marker_ >= 0xD0 && marker_ <= 0xD7, name_,
                  ": corrupt JPEG (scan ", scan_, ": no restart marker after MCU ", mcu_ + 1, " of ", mcus_, ")");
    pos_ = marker_end_;
    acc_ = 0;
    nbits_ = 0;
  }
  // After the scan's last MCU: as after an interval, only padding bits may be left before the marker
  // (stb would skip further bytes up to the next FF and fail or not depending on them). Returns the
  // marker and the position after it.
  std::pair<int, size_t> end_of_scan() {
    if (nbits_ >= 8 || !next_is_marker()) {
      SPARROW_CHECK(nbits_ >= 8 || pos_ < size_, name_, ": corrupt JPEG (scan ", scan_,
                    ": the file ends without a marker after the data)");
      SPARROW_FAIL(name_, ": corrupt JPEG (scan ", scan_, ": data left after its last MCU, near byte ",
                   pos_ - size_t(nbits_ / 8), ")");
    }
    // stb reads the byte after the first FF as the marker unless its look-ahead already met the marker.
    SPARROW_CHECK(marker_end_ == pos_ + 2, name_, ": corrupt JPEG (scan ", scan_,
                  ": fill bytes before the marker after it)");
    return {marker_, marker_end_};
  }

 private:
  // Loads whole bytes while they fit, up to the segment's end.
  void refill() {
    while (nbits_ <= 56) {
      if (next_is_marker() || pos_ >= size_) return;
      const unsigned v = b_[pos_];
      pos_ += v == 0xFF ? skip_stuffed() : 1;
      acc_ |= uint64_t(v) << (56 - nbits_);
      nbits_ += 8;
    }
  }
  [[noreturn]] void fail_ends() {
    SPARROW_FAIL(name_, ": corrupt JPEG (scan ", scan_, ": the entropy-coded data ends in MCU ", mcu_ + 1, " of ",
                 mcus_, next_is_marker() ? " (a marker cuts it short)" : " (the file is truncated)", ")");
  }
  // At FF: the length of FF [FF...] 00, a stuffed FF data byte.
  size_t skip_stuffed() const {
    size_t q = pos_ + 1;
    while (q < size_ && b_[q] == 0xFF) ++q;
    return q + 1 - pos_;
  }
  // True (and the marker recorded) when the bytes at pos_ are FF [FF...] X with X != 0. An FF with only
  // FF bytes after it up to the end of the file counts as the end of the data.
  bool next_is_marker() {
    if (pos_ >= size_ || b_[pos_] != 0xFF) return false;
    size_t q = pos_ + 1;
    while (q < size_ && b_[q] == 0xFF) ++q;
    if (q >= size_) {
      pos_ = size_;
      return false;
    }
    if (b_[q] == 0x00) return false;
    marker_ = b_[q];
    marker_end_ = q + 1;
    return true;
  }

  const uint8_t* b_;
  size_t size_, pos_;
  const std::string& name_;
  const int& scan_;
  const int64_t& mcu_;
  int64_t mcus_;
  uint64_t acc_ = 0;  // unread bits, MSB first; zero below them
  int nbits_ = 0;
  int marker_ = 0;  // the last marker next_is_marker found, and the position after it
  size_t marker_end_ = 0;
};

class JpegWalk {
 public:
  JpegWalk(const uint8_t* b, size_t size, const std::string& name, int64_t max_pixels)
      : b_(b), size_(size), name_(name), max_pixels_(max_pixels) {}

  void run() {
    // stb takes any input starting with FF [FF...] D8 for a JPEG; anything else is not one (PNG or junk).
    size_t p = 0;
    if (size_ == 0 || b_[0] != 0xFF) return;
    while (p < size_ && b_[p] == 0xFF) ++p;
    if (p >= size_ || b_[p] != 0xD8) return;
    pos_ = p + 1;
    // Header: segments up to the frame header (stb's header pass, which stbi_info runs too).
    int m = next_marker();
    while (!(m == 0xC0 || m == 0xC1 || m == 0xC2)) {
      segment(m, /*in_header=*/true);
      m = next_marker();
    }
    frame(m == 0xC2);
    // Image: scans and tables up to EOI.
    for (m = next_marker(); m != 0xD9; m = next_marker()) {
      if (m == 0xDA) {
        const auto next = scan();
        pending_marker_ = next.first;
        pos_ = next.second;
      } else if (m == 0xDC) {  // DNL
        SPARROW_CHECK(get16() == 4, name_, ": corrupt JPEG (bad DNL length)");
        SPARROW_CHECK(get16() == height_, name_, ": corrupt JPEG (DNL height differs from the frame's)");
      } else {
        segment(m, /*in_header=*/false);
      }
    }
    // stb would show a component no scan decoded as whatever its (uninitialised) buffers hold.
    for (const auto& c : comps_)
      SPARROW_CHECK(c.scanned, name_, ": corrupt JPEG (component ", c.id, " is in no scan",
                    progressive_ ? " of DC coefficients" : "", ")");
  }

 private:
  // --- bytes and markers outside the scans
  int get8() {
    SPARROW_CHECK(pos_ < size_, name_, ": corrupt JPEG (truncated: a segment runs past the end of the file)");
    return b_[pos_++];
  }
  int get16() {
    const int hi = get8();
    return (hi << 8) | get8();
  }
  int next_marker() {
    if (pending_marker_ >= 0) {
      const int m = pending_marker_;
      pending_marker_ = -1;
      return m;
    }
    SPARROW_CHECK(pos_ < size_, name_, ": corrupt JPEG (the file ends before the end-of-image marker)");
    SPARROW_CHECK(b_[pos_] == 0xFF, name_, ": corrupt JPEG (no marker at byte ", pos_, ")");
    while (pos_ < size_ && b_[pos_] == 0xFF) ++pos_;
    SPARROW_CHECK(pos_ < size_, name_, ": corrupt JPEG (the file ends before the end-of-image marker)");
    return b_[pos_++];
  }
  std::string marker_name(int m) const {
    static const char* hex = "0123456789ABCDEF";
    return std::string("FF") + hex[(m >> 4) & 15] + hex[m & 15];
  }

  // A table or an ignorable segment (stb's process_marker); any other marker fails as in stb.
  void segment(int m, bool in_header) {
    const size_t at = pos_ - 2;
    if (m == 0xDD) {  // DRI
      SPARROW_CHECK(get16() == 4, name_, ": corrupt JPEG (bad restart-interval segment at byte ", at, ")");
      restart_interval_ = get16();
    } else if (m == 0xDB) {  // DQT
      int left = get16() - 2;
      while (left > 0) {
        const int q = get8(), precision = q >> 4, t = q & 15;
        SPARROW_CHECK(precision <= 1 && t <= 3, name_, ": corrupt JPEG (quantization table ", t, " precision ",
                      precision, ")");
        for (int i = 0; i < 64; ++i) precision ? get16() : get8();
        quant_defined_[t] = true;
        left -= precision ? 129 : 65;
      }
      SPARROW_CHECK(left == 0, name_, ": corrupt JPEG (quantization tables do not fill their segment at byte ", at,
                    ")");
    } else if (m == 0xC4) {  // DHT
      int left = get16() - 2;
      while (left > 0) {
        const int q = get8(), tc = q >> 4, th = q & 15;
        SPARROW_CHECK(tc <= 1 && th <= 3, name_, ": corrupt JPEG (Huffman table class ", tc, " id ", th, ")");
        Huffman& h = (tc == 0 ? dc_ : ac_)[th];
        int n = 0;
        for (int len = 1; len <= 16; ++len) n += h.count[len] = get8();
        // stb_image keeps a symbol's index in a byte with 255 meaning "no short code", so a 256th symbol
        // with a code of 9 bits or fewer is decoded as another one (found in review): at most 255 codes.
        SPARROW_CHECK(n <= 255, name_, ": corrupt JPEG (Huffman table declares ", n, " codes, at most 255)");
        int code = 0, k = 0;
        for (int len = 1; len <= 16; ++len) {  // canonical codes; stb rejects a length that overflows
          h.first[len] = code;
          h.index[len] = k;
          code += h.count[len];
          k += h.count[len];
          SPARROW_CHECK(h.count[len] == 0 || code - 1 < (1 << len), name_,
                        ": corrupt JPEG (Huffman table ", tc, "/", th, ": more codes of length ", len, " than fit)");
          code <<= 1;
        }
        for (int i = 0; i < n; ++i) h.values[i] = uint8_t(get8());
        std::fill(std::begin(h.fast), std::end(h.fast), uint16_t(0));
        for (int len = 1; len <= kFastBits; ++len)
          for (int i = 0; i < h.count[len]; ++i) {
            const int lo = (h.first[len] + i) << (kFastBits - len), span = 1 << (kFastBits - len);
            for (int f = lo; f < lo + span; ++f) h.fast[f] = uint16_t(len << 8 | h.values[h.index[len] + i]);
          }
        h.defined = true;
        left -= 17 + n;
      }
      SPARROW_CHECK(left == 0, name_, ": corrupt JPEG (Huffman tables do not fill their segment at byte ", at, ")");
    } else if ((m >= 0xE0 && m <= 0xEF) || m == 0xFE) {  // APPn, COM
      const int len = get16();
      SPARROW_CHECK(len >= 2 && size_t(len - 2) <= size_ - pos_, name_, ": corrupt JPEG (segment ", marker_name(m),
                    " at byte ", at, " runs past the end of the file)");
      pos_ += size_t(len - 2);
    } else if (m >= 0xC3 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      SPARROW_FAIL(name_, ": unsupported JPEG coding (frame marker ", marker_name(m),
                   "; baseline, extended and progressive Huffman only)");
    } else {
      SPARROW_FAIL(name_, ": corrupt JPEG (unexpected marker ", marker_name(m), " at byte ", at,
                   in_header ? " before the frame header)" : ")");
    }
  }

  // SOF0/1/2 (stb's process_frame_header), with the pixel limit checked before anything is allocated.
  void frame(bool progressive) {
    progressive_ = progressive;
    const int len = get16();
    const int precision = get8();
    height_ = get16();
    width_ = get16();
    const int nc = get8();
    SPARROW_CHECK(len >= 11 && len == 8 + 3 * nc, name_, ": corrupt JPEG (bad frame header length)");
    SPARROW_CHECK(precision == 8, name_, ": unsupported JPEG (", precision, "-bit samples; 8-bit only)");
    SPARROW_CHECK(width_ > 0 && height_ > 0, name_, ": unsupported JPEG (image size ", width_, "x", height_,
                  " in the frame header)");
    SPARROW_CHECK(int64_t(width_) * height_ <= max_pixels_, name_, ": image ", width_, "x", height_,
                  " exceeds the size limit of ", max_pixels_, " pixels");
    SPARROW_CHECK(nc == 1 || nc == 3 || nc == 4, name_, ": corrupt JPEG (", nc, " components)");
    comps_.assign(size_t(nc), Component{});
    int hmax = 1, vmax = 1;
    for (auto& c : comps_) {
      c.id = get8();
      const int hv = get8();
      c.h = hv >> 4;
      c.v = hv & 15;
      c.tq = get8();
      SPARROW_CHECK(c.h >= 1 && c.h <= 4 && c.v >= 1 && c.v <= 4 && c.tq <= 3, name_,
                    ": corrupt JPEG (component ", c.id, ": sampling ", c.h, "x", c.v, ", quantization table ", c.tq,
                    ")");
      hmax = std::max(hmax, c.h);
      vmax = std::max(vmax, c.v);
    }
    for (const auto& c : comps_)
      SPARROW_CHECK(hmax % c.h == 0 && vmax % c.v == 0, name_, ": corrupt JPEG (component ", c.id,
                    ": sampling factors that do not divide the largest)");
    mcus_x_ = (width_ + 8 * hmax - 1) / (8 * hmax);
    mcus_y_ = (height_ + 8 * vmax - 1) / (8 * vmax);
    for (auto& c : comps_) {
      c.x = (width_ * c.h + hmax - 1) / hmax;
      c.y = (height_ * c.v + vmax - 1) / vmax;
      c.coeff_w = mcus_x_ * c.h;
      c.coeff_h = mcus_y_ * c.v;
    }
  }

  // SOS header and its entropy-coded data; returns the marker after the data and the position after it.
  std::pair<int, size_t> scan() {
    ++scans_;
    const int len = get16();
    const int ns = get8();
    SPARROW_CHECK(ns >= 1 && ns <= 4 && ns <= int(comps_.size()), name_, ": corrupt JPEG (scan ", scans_, " has ", ns,
                  " components)");
    SPARROW_CHECK(len == 6 + 2 * ns, name_, ": corrupt JPEG (bad scan header length)");
    std::vector<int> order;
    for (int i = 0; i < ns; ++i) {
      const int id = get8(), tables = get8();
      size_t which = 0;
      while (which < comps_.size() && comps_[which].id != id) ++which;
      SPARROW_CHECK(which < comps_.size(), name_, ": corrupt JPEG (scan ", scans_, " names component ", id,
                    ", which the frame does not have)");
      Component& c = comps_[which];
      c.hd = tables >> 4;
      c.ha = tables & 15;
      SPARROW_CHECK(c.hd <= 3 && c.ha <= 3, name_, ": corrupt JPEG (scan selects Huffman table ", c.hd, "/", c.ha,
                    ")");
      order.push_back(int(which));
    }
    ss_ = get8();
    se_ = get8();
    const int a = get8();
    ah_ = a >> 4;
    al_ = a & 15;
    if (progressive_) {
      SPARROW_CHECK(ss_ <= se_ && se_ <= 63 && ah_ <= 13 && al_ <= 13, name_, ": corrupt JPEG (scan ", scans_,
                    ": spectral selection ", ss_, "..", se_, ", approximation ", ah_, "/", al_, ")");
      SPARROW_CHECK(ss_ > 0 || se_ == 0, name_, ": corrupt JPEG (scan ", scans_, " mixes DC and AC coefficients)");
      SPARROW_CHECK(ss_ == 0 || ns == 1, name_, ": corrupt JPEG (scan ", scans_,
                    ": an AC scan of more than one component)");
    } else {
      SPARROW_CHECK(ss_ == 0 && ah_ == 0 && al_ == 0, name_, ": corrupt JPEG (scan ", scans_,
                    ": progressive parameters in a sequential frame)");
      se_ = 63;
    }
    for (int n : order) {
      const Component& c = comps_[size_t(n)];
      const bool uses_dc = !progressive_ || (ss_ == 0 && ah_ == 0), uses_ac = !progressive_ || ss_ > 0;
      SPARROW_CHECK((!uses_dc || dc_[c.hd].defined) && (!uses_ac || ac_[c.ha].defined), name_,
                    ": corrupt JPEG (a scan uses a Huffman table that was never defined)");
      SPARROW_CHECK(quant_defined_[c.tq], name_, ": corrupt JPEG (component ", c.id, " uses quantization table ",
                    c.tq, ", which was never defined)");
      // stb clears a block's coefficients in the first DC scan; a scan before it would read (and, for AC
      // refinement, take its bit count from) uninitialised memory (found in review).
      SPARROW_CHECK(!progressive_ || (ss_ == 0 && ah_ == 0) || c.scanned, name_, ": corrupt JPEG (scan ", scans_,
                    " comes before the first DC scan of component ", c.id, ")");
    }
    for (auto& c : comps_) c.dc_pred = 0;

    if (progressive_)
      for (int n : order) comps_[size_t(n)].nonzero.resize(size_t(comps_[size_t(n)].coeff_h));

    // The MCUs, in stb's order: one block per MCU for a single-component scan, else the frame's MCUs.
    const bool single = ns == 1;
    const Component& c0 = comps_[size_t(order[0])];
    const int64_t mcus = single ? int64_t((c0.x + 7) >> 3) * ((c0.y + 7) >> 3) : int64_t(mcus_x_) * mcus_y_;
    int64_t mcu = 0;
    ScanBits in(b_, size_, pos_, name_, scans_, mcu, mcus);
    eob_run_ = 0;
    int64_t todo = restart_interval_ ? restart_interval_ : INT64_MAX;
    const int w = single ? (c0.x + 7) >> 3 : mcus_x_;
    for (; mcu < mcus; ++mcu) {
      const int i = int(mcu % w), j = int(mcu / w);
      if (single) {
        block(in, order[0], i, j);
      } else {
        for (int n : order)
          for (int y = 0; y < comps_[size_t(n)].v; ++y)
            for (int x = 0; x < comps_[size_t(n)].h; ++x)
              block(in, n, i * comps_[size_t(n)].h + x, j * comps_[size_t(n)].v + y);
      }
      if (--todo <= 0 && mcu + 1 < mcus) {
        in.restart();
        eob_run_ = 0;
        for (auto& c : comps_) c.dc_pred = 0;
        todo = restart_interval_;
      }
    }
    for (int n : order)
      if (!progressive_ || (ss_ == 0 && ah_ == 0)) comps_[size_t(n)].scanned = true;
    return in.end_of_scan();
  }

  // A DC difference, added to the predictor as stb adds it. stb multiplies the sum by the quantization
  // step (up to 65535) or by 2^Al (up to 2^13) in an int: beyond ±32767 that overflows (found in review;
  // 8-bit JPEGs stay within ±2047).
  void dc(ScanBits& in, Component& c) {
    const int t = in.huffman(dc_[c.hd]);
    SPARROW_CHECK(t <= 15, name_, ": corrupt JPEG (scan ", scans_, ": DC magnitude category ", t, ")");
    c.dc_pred += in.receive_extend(t);
    SPARROW_CHECK(c.dc_pred >= -32767 && c.dc_pred <= 32767, name_, ": corrupt JPEG (scan ", scans_,
                  ": DC coefficient ", c.dc_pred, " of component ", c.id, " out of range)");
  }

  void block(ScanBits& in, int n, int bx, int by) {
    Component& c = comps_[size_t(n)];
    if (!progressive_) {  // F.2.2: DC difference, then AC run/size pairs up to EOB or 63
      dc(in, c);
      int k = 1;
      do {
        const int rs = in.huffman(ac_[c.ha]), r = rs >> 4, s = rs & 15;
        if (s == 0) {
          if (rs != 0xF0) break;
          k += 16;
        } else {
          k += r + 1;
          in.receive_extend(s);
        }
      } while (k < 64);
      return;
    }
    std::vector<uint64_t>& row = c.nonzero[size_t(by)];
    if (row.empty()) row.assign(size_t(c.coeff_w), 0);
    uint64_t& nz = row[size_t(bx)];
    if (ss_ == 0) {  // DC: first scan clears the block (as stb does), refinement reads one bit
      if (ah_ == 0) {
        nz = 0;
        dc(in, c);
      } else {
        in.bit();
      }
      return;
    }
    if (ah_ == 0) {  // AC first scan (G.1.2.2)
      if (eob_run_ > 0) {
        --eob_run_;
        return;
      }
      int k = ss_;
      do {
        const int rs = in.huffman(ac_[c.ha]), r = rs >> 4, s = rs & 15;
        if (s == 0) {
          if (r < 15) {
            eob_run_ = (1 << r) - 1 + int(in.bits(r));
            break;
          }
          k += 16;
        } else {
          k += r;
          const int value = in.receive_extend(s);
          // The coefficient stb stores: value << Al in a short (it wraps to 0 for some crafted values).
          const bool set = uint16_t(unsigned(value) << al_) != 0;
          const int pos = k < 63 ? k : 63;  // stb lets corrupt runs land on coefficient 63
          nz = set ? nz | (uint64_t(1) << pos) : nz & ~(uint64_t(1) << pos);
          ++k;
        }
      } while (k <= se_);
      return;
    }
    // AC refinement (G.1.2.3): a correction bit for every coefficient already non-zero that the run passes.
    if (eob_run_ > 0) {
      --eob_run_;
      for (int k = ss_; k <= se_; ++k)
        if (nz >> k & 1) in.bit();
      return;
    }
    int k = ss_;
    do {
      const int rs = in.huffman(ac_[c.ha]);
      int r = rs >> 4;
      const int s = rs & 15;
      if (s == 0) {
        if (r < 15) {
          eob_run_ = (1 << r) - 1 + int(in.bits(r));
          r = 64;  // the rest of the band: correction bits only
        }
      } else {
        SPARROW_CHECK(s == 1, name_, ": corrupt JPEG (scan ", scans_, ": refinement magnitude ", s, ")");
        in.bit();  // sign
      }
      while (k <= se_) {
        const int pos = k++;
        if (nz >> pos & 1) {
          in.bit();
        } else {
          if (r == 0) {
            if (s != 0) nz |= uint64_t(1) << pos;
            break;
          }
          --r;
        }
      }
    } while (k <= se_);
  }

  const uint8_t* b_;
  size_t size_, pos_ = 0;
  const std::string& name_;
  int64_t max_pixels_;
  int pending_marker_ = -1;
  Huffman dc_[4], ac_[4];
  bool quant_defined_[4] = {false, false, false, false};
  int restart_interval_ = 0;
  bool progressive_ = false;
  int width_ = 0, height_ = 0, mcus_x_ = 0, mcus_y_ = 0;
  std::vector<Component> comps_;
  int scans_ = 0, ss_ = 0, se_ = 63, ah_ = 0, al_ = 0;
  int eob_run_ = 0;
};

}  // namespace

void check_jpeg_stream(const uint8_t* bytes, size_t size, const std::string& name, int64_t max_pixels) {
  JpegWalk(bytes, size, name, max_pixels).run();
}

}  // namespace sparrow
