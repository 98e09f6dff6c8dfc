// Internal helpers shared by the dataset loaders: directory resolution and whole-file reads that throw a
// one-line sparrow::Error naming the dataset and the path. Not part of the public data API.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sparrow::data_detail {

// `dir` (or default_data_dir(dataset) when empty) must be a directory. If `probe` is missing there but
// `dir/subdir` is a directory, that is returned instead (the parent of an extracted archive).
std::string resolve_dir(const std::string& dataset, const std::string& dir, const std::string& probe,
                        const std::string& subdir);
// The whole file; throws "<dataset>: <path>: ..." when it is missing, not a regular file, or unreadable.
std::vector<uint8_t> read_file_bytes(const std::string& dataset, const std::string& path);
std::string join_path(const std::string& a, const std::string& b);

}  // namespace sparrow::data_detail
