// In-memory parsers for the dataset file formats: CIFAR binary records, IDX arrays (plain or gzip),
// Tiny-ImageNet's wnids.txt and val_annotations.txt, and JPEG/PNG images (stb_image). Every input is
// untrusted: the path-based loaders (dataset.cpp, tiny_imagenet.cpp) read a file and call these, and the
// fuzz targets (tests/fuzz) call them directly, so the fuzzed code is the production code. `name` (the
// dataset and path) starts every error message; a bad input is a one-line sparrow::Error, nothing else.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"

namespace sparrow {

// CIFAR: records of `label_bytes` label bytes (1: CIFAR-10; 2: CIFAR-100 coarse then fine) and 3072 pixel
// bytes (R, G, B planes of 32×32). Appends the records to out.labels / out.pixels (3×32×32 CHW); labels must
// be < `classes` (CIFAR-100 coarse labels < 20). Does not touch out.n.
void parse_cifar_bytes(const uint8_t* bytes, size_t size, const std::string& name, int label_bytes, int classes,
                       ImageSet& out);

// True when the bytes start with the gzip magic (1f 8b).
bool is_gzip(const uint8_t* bytes, size_t size);
// The decompressed content of a gzip file (one or more members; anything after the last member is an
// error). Fails when the output would exceed `max_out` bytes, so a small file cannot claim gigabytes.
std::vector<uint8_t> gunzip_bytes(const uint8_t* bytes, size_t size, const std::string& name, uint64_t max_out);
// Upper bound on what `size` bytes of deflate data can expand to (the format's ratio is below 1032:1).
uint64_t gunzip_limit(size_t size);

// An IDX array of unsigned bytes (type code 0x08): big-endian magic 0x0000 08 <ndim>, ndim big-endian u32
// dimensions, then exactly prod(dims) bytes.
struct IdxArray {
  uint32_t magic = 0;
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};
// Parses plain or gzip-compressed IDX bytes. `expected_magic` (0: any unsigned-byte IDX) is checked
// first; `noun` names the items along the first dimension in messages ("images", "labels").
IdxArray parse_idx_bytes(const uint8_t* bytes, size_t size, const std::string& name, uint32_t expected_magic = 0,
                         const char* noun = "items");
// The Fashion-MNIST split from its images (magic 2051, n×28×28) and labels (magic 2049, n values < 10).
// `set_name` names the result ("fashion-mnist/train").
ImageSet fashion_mnist_from_idx(IdxArray images, const std::string& images_name, const IdxArray& labels,
                                const std::string& labels_name, const std::string& set_name);

// Tiny-ImageNet wnids.txt: one class id per line (blank lines and surrounding spaces ignored), returned
// sorted (the class order). Ids must be unique and usable as a folder name (no '/', not "." or "..").
std::vector<std::string> parse_wnids(const std::string& text, const std::string& name);

// val_annotations.txt: "file<TAB>wnid[<TAB>box...]" per line; the wnid must be one of `sorted_wnids`
// and the file a plain file name (no folders), so an annotation can never point outside val/images.
struct ValAnnotation {
  std::string file;
  int32_t label = 0;
};
std::vector<ValAnnotation> parse_val_annotations(const std::string& text, const std::string& name,
                                                 const std::vector<std::string>& sorted_wnids);

// Checks a JPEG before stb_image decodes it (jpeg_check.cpp): every marker segment and every scan's
// entropy-coded data, down to the Huffman codes, as stb_image 2.27 would read them. Fails with a one-line
// error on anything stb would decode from bytes that are not in the file (a truncated scan, a code its
// table lacks, a missing restart marker), on tables a scan uses before they are defined, and on a frame of
// more than `max_pixels` pixels. Inputs that do not start like a JPEG (FF [FF...] D8) are left alone.
void check_jpeg_stream(const uint8_t* bytes, size_t size, const std::string& name, int64_t max_pixels);

// Decodes a JPEG or PNG (grayscale or RGB, alpha dropped) into `dst` as 3×side×side CHW. The header is
// read first: an image announcing more than `max_pixels` pixels, or another size than side×side, is
// rejected before any pixel memory is allocated.
void decode_image_bytes(const uint8_t* bytes, size_t size, const std::string& name, int64_t max_pixels, int side,
                        uint8_t* dst);

}  // namespace sparrow
