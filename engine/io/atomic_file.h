// Whole-file writes that never leave a half-written file at the destination: bytes go to
// "<path>.tmp.<pid>.<n>", are fsynced, renamed over <path>, and the directory is fsynced. Plain POSIX I/O on
// byte buffers; every failure is a sparrow::Error naming the path and the errno text.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparrow {

// Streams one file into place. write() may be called many times; commit() publishes the file. Any error,
// or destruction before commit(), removes the temporary file and leaves an existing <path> untouched.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates the temporary file next to <path>
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync, rename over <path>, fsync the directory

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }

 private:
  [[noreturn]] void fail(const std::string& what, int err);  // discards the temp file, then throws
  void discard() noexcept;

  std::string path_;
  std::string temp_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, const void* data, size_t size);

// Removes the temporary files "<path>.tmp.<pid>.<n>" left by writers that died mid-write (a SIGKILL or a
// power cut before the rename); a temp file whose process is still running is left alone. Returns how
// many were removed. <path> itself is never touched.
int remove_stale_temp_files(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes);

// Whole file into memory; a missing or unreadable file is an Error naming it.
std::vector<uint8_t> read_file_bytes(const std::string& path);
std::string read_file_text(const std::string& path);

// mkdir -p: creates <dir> and its missing parents; an existing directory is fine, an existing non-directory
// is an Error.
void make_dirs(const std::string& dir);

}  // namespace sparrow
