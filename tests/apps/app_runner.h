// Runs an app binary from build/bin with arguments, capturing exit code, stdout and stderr; and a
// temporary directory that cleans itself up. Used by the app-level tests.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace sparrow::testing {

struct RunResult {
  int code = -1;
  std::string out, err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs build/bin/<app> with args (stdout/stderr captured under tmp). timeout_s > 0 kills it after that many
// seconds (exit code 137), so a hang fails the test instead of stalling the suite.
inline RunResult run_app(const std::string& app, const std::vector<std::string>& args, const std::string& tmp,
                         int timeout_s = 0) {
  std::string cmd = timeout_s > 0 ? "timeout -s KILL " + std::to_string(timeout_s) + " " : std::string();
  cmd += shell_quote(std::string(SPARROW_BIN_DIR) + "/" + app);
  for (auto& a : args) cmd += " " + shell_quote(a);
  const std::string out = tmp + "/stdout.txt", err = tmp + "/stderr.txt";
  cmd += " >" + shell_quote(out) + " 2>" + shell_quote(err) + " </dev/null";
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/sparrow-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace sparrow::testing
