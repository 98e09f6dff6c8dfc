// Run folder files: JSON documents written atomically, JSON Lines appended with one write() per line (so a
// crash leaves whole lines behind), and readers whose errors name the file and line.
#include "engine/io/run_folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "engine/base/error.h"
#include "engine/io/atomic_file.h"

namespace sparrow {
namespace {

std::string dump_checked(const nlohmann::json& value, int indent, const std::string& path) {
  try {
    return value.dump(indent);
  } catch (const nlohmann::json::exception& e) {
    SPARROW_FAIL(path, ": cannot write JSON: ", e.what());
  }
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

std::string json_text(const nlohmann::json& value, int indent) {
  try {
    return value.dump(indent);
  } catch (const nlohmann::json::exception& e) {
    SPARROW_FAIL("cannot write JSON: ", e.what());
  }
}

nlohmann::json read_json(const std::string& path) {
  std::string text = read_file_text(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SPARROW_FAIL(path, ": not valid JSON: ", e.what());
  }
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::string text = read_file_text(path);
  std::vector<nlohmann::json> rows;
  size_t start = 0, line = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t stop = nl == std::string::npos ? text.size() : nl;
    ++line;
    std::string piece = text.substr(start, stop - start);
    start = stop + 1;
    if (piece.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      rows.push_back(nlohmann::json::parse(piece));
    } catch (const nlohmann::json::exception& e) {
      SPARROW_FAIL(path, ":", line, ": not valid JSON: ", e.what());
    }
  }
  return rows;
}

void write_json_atomic(const std::string& path, const nlohmann::json& value) {
  write_file_atomic(path, dump_checked(value, 2, path) + "\n");
}

void append_jsonl(const std::string& path, const nlohmann::json& row) {
  std::string line = dump_checked(row, -1, path) + "\n";
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    int err = errno;
    SPARROW_FAIL("cannot open ", path, " for appending: ", std::generic_category().message(err));
  }
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::close(fd);
      SPARROW_FAIL("cannot append to ", path, ": ", std::generic_category().message(err));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    int err = errno;
    SPARROW_FAIL("cannot append to ", path, ": ", std::generic_category().message(err));
  }
}

RunFolder::RunFolder(std::string dir) : dir_(std::move(dir)) {
  SPARROW_CHECK(!dir_.empty(), "--out: the run folder path is empty");
  make_dirs(dir_);
  // A run killed mid-write leaves its temp files behind; they were never renamed, so they are garbage.
  for (const char* f : {kConfig, kMetrics, kSummary}) remove_stale_temp_files(path(f));
}

std::string RunFolder::path(const std::string& name) const {
  return dir_.back() == '/' ? dir_ + name : dir_ + "/" + name;
}

void RunFolder::write_config(const nlohmann::json& config) const { write_json_atomic(path(kConfig), config); }

void RunFolder::write_summary(const nlohmann::json& summary) const {
  write_json_atomic(path(kSummary), summary);
}

void RunFolder::append_metrics(const nlohmann::json& row) const {
  SPARROW_CHECK(row.is_object(), path(kMetrics), ": a metrics row must be a JSON object, got ", row.type_name());
  append_jsonl(path(kMetrics), row);
}

nlohmann::json RunFolder::read_config() const { return read_json(path(kConfig)); }

nlohmann::json RunFolder::read_summary() const { return read_json(path(kSummary)); }

std::vector<nlohmann::json> RunFolder::read_metrics() const {
  std::string p = path(kMetrics);
  if (!file_exists(p)) return {};
  return read_jsonl(p);
}

void RunFolder::rewrite_metrics(const std::vector<nlohmann::json>& rows) const {
  std::string p = path(kMetrics);
  std::string text;
  for (const auto& row : rows) {
    SPARROW_CHECK(row.is_object(), p, ": a metrics row must be a JSON object, got ", row.type_name());
    text += dump_checked(row, -1, p) + "\n";
  }
  write_file_atomic(p, text);
}

}  // namespace sparrow
