// Atomic whole-file writes (temp file + fsync + rename + directory fsync) and whole-file reads, on POSIX
// file descriptors so every failure carries its errno (ENOSPC, EFBIG, EACCES ...) into the message.
#include "engine/io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <system_error>
#include <thread>

#include "engine/base/error.h"

namespace sparrow {
namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Distinct per call so two writers of the same path in one process never share a temporary file.
std::string temp_name(const std::string& path) {
  static std::atomic<unsigned long> counter{0};
  return str(path, ".tmp.", static_cast<long>(::getpid()), ".", counter.fetch_add(1));
}

// Fault-injection hook for the kill tests: SPARROW_FAULT_WRITE_DELAY_US=<n> sleeps n microseconds after
// every write() so a signal aimed at a write in progress lands inside it on any machine. Unset: no delay.
long write_delay_us() {
  static const long us = [] {
    const char* v = std::getenv("SPARROW_FAULT_WRITE_DELAY_US");
    return v ? std::max(0L, std::strtol(v, nullptr, 10)) : 0L;
  }();
  return us;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), temp_(temp_name(path_)) {
  SPARROW_CHECK(!path_.empty(), "cannot write a file with an empty path");
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    int err = errno;
    SPARROW_FAIL(path_, ": cannot create temporary file ", temp_, ": ", errno_text(err));
  }
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::fail(const std::string& what, int err) {
  discard();
  SPARROW_FAIL(path_, ": ", what, ": ", errno_text(err));
}

void AtomicFile::write(const void* data, size_t size) {
  SPARROW_CHECK(fd_ >= 0, path_, ": write after the file was committed or discarded");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(str("write to temporary file ", temp_, " failed"), errno);
    }
    if (n == 0) fail(str("write to temporary file ", temp_, " made no progress"), EIO);
    p += n;
    size -= static_cast<size_t>(n);
  }
  if (const long us = write_delay_us()) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

void AtomicFile::commit() {
  SPARROW_CHECK(fd_ >= 0, path_, ": commit after the file was committed or discarded");
  if (::fsync(fd_) != 0) fail(str("fsync of temporary file ", temp_, " failed"), errno);
  int fd = fd_;
  fd_ = -1;
  // close() can report a deferred write error (NFS, quota); the temp file is then not trustworthy.
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(temp_.c_str());
    SPARROW_FAIL(path_, ": closing temporary file ", temp_, " failed: ", errno_text(err));
  }
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(temp_.c_str());
    SPARROW_FAIL(path_, ": cannot rename ", temp_, " over it: ", errno_text(err));
  }
  // The rename is durable only once the directory entry is on disk.
  std::string dir = parent_dir(path_);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    int err = errno;
    SPARROW_FAIL(path_, ": written, but cannot open directory ", dir, " to sync it: ", errno_text(err));
  }
  int rc = ::fsync(dfd);
  int err = errno;
  ::close(dfd);
  // EINVAL: the filesystem does not support syncing directories; nothing more can be done there.
  if (rc != 0 && err != EINVAL)
    SPARROW_FAIL(path_, ": written, but fsync of directory ", dir, " failed: ", errno_text(err));
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFile f(path);
  f.write(data, size);
  f.commit();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

int remove_stale_temp_files(const std::string& path) {
  const std::string dir = parent_dir(path);
  const size_t slash = path.find_last_of('/');
  const std::string prefix = (slash == std::string::npos ? path : path.substr(slash + 1)) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  int removed = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    // "<pid>.<n>", both decimal: anything else is not ours.
    const std::string rest = name.substr(prefix.size());
    const size_t dot = rest.find('.');
    if (dot == 0 || dot == std::string::npos || dot + 1 == rest.size() ||
        rest.find_first_not_of("0123456789.") != std::string::npos || rest.find('.', dot + 1) != std::string::npos)
      continue;
    if (dot > 9) continue;  // not a pid
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dot)));
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    const std::string full = dir + "/" + name;
    if (::unlink(full.c_str()) == 0) ++removed;
  }
  ::closedir(d);
  return removed;
}

namespace {

template <typename Buffer>
Buffer read_whole(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    SPARROW_FAIL("cannot open ", path, ": ", errno_text(err));
  }
  Buffer buf;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) buf.reserve(static_cast<size_t>(st.st_size));
  char chunk[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      SPARROW_FAIL("cannot read ", path, ": ", errno_text(err));
    }
    if (n == 0) break;
    buf.insert(buf.end(), chunk, chunk + n);
  }
  ::close(fd);
  return buf;
}

}  // namespace

std::vector<uint8_t> read_file_bytes(const std::string& path) { return read_whole<std::vector<uint8_t>>(path); }

std::string read_file_text(const std::string& path) { return read_whole<std::string>(path); }

void make_dirs(const std::string& dir) {
  SPARROW_CHECK(!dir.empty(), "cannot create a directory with an empty path");
  // Create each prefix in turn; an existing component is fine as long as it is a directory.
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    std::string prefix = dir.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (::mkdir(prefix.c_str(), 0777) == 0) continue;
    int err = errno;
    struct stat st {};
    if (err == EEXIST || err == EISDIR) {
      if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
      SPARROW_FAIL("cannot create directory ", dir, ": ", prefix, " exists and is not a directory");
    }
    // EACCES on an existing parent (e.g. "/" components we may not create but can traverse).
    if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    SPARROW_FAIL("cannot create directory ", dir, ": ", errno_text(err));
  }
}

}  // namespace sparrow
