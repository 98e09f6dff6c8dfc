// What happens when things go wrong, end to end on sparrow-train / sparrow-eval (CPU, synthetic data):
// SIGKILL at random moments during checkpoint writes never leaves a broken checkpoint; a full disk
// (RLIMIT_FSIZE) is a one-line error that keeps the last good checkpoint and leaves no temp file; a
// diverging run stops naming the step and the layer with the last good checkpoint intact; SIGINT saves,
// exits 130 and resumes to the weights of an uninterrupted run; untrusted or mismatched checkpoints are
// one-line errors saying what is wrong.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fcntl.h>
#include <filesystem>
#include <random>
#include <regex>
#include <thread>

#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "tests/apps/app_runner.h"

using namespace sparrow;
using namespace sparrow::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Small, fast runs: ResNet-8 on 160 synthetic images = 10 steps per epoch.
const std::vector<std::string> kData = {"--dataset", "synthetic", "--batch-size", "16", "--limit-train", "160",
                                        "--limit-test", "32", "--quiet", "--seed", "5"};
const std::vector<std::string> kRun = {"--dataset", "synthetic", "--model", "resnet8", "--batch-size", "16",
                                       "--limit-train", "160", "--limit-test", "32", "--threads", "1",
                                       "--quiet", "--seed", "5"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void expect_one_line_error(const RunResult& r, const std::vector<std::string>& needles) {
  EXPECT_NE(r.code, 0) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "error must be one line: " << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "'" << n << "' not in: " << r.err;
}

// A child running build/bin/<app> with stdout/stderr in files; optionally a file-size limit (a full disk
// for the files it writes), set between fork and exec. The app itself ignores SIGXFSZ, so a write past
// the limit fails with EFBIG as it would with ENOSPC.
struct Child {
  pid_t pid = -1;
  std::string out, err;

  Child(const std::string& app, const std::vector<std::string>& args, const std::string& dir,
        rlim_t fsize_limit = RLIM_INFINITY, const char* write_delay_us = nullptr) {
    const std::string exe = std::string(SPARROW_BIN_DIR) + "/" + app;
    out = dir + "/child.out";
    err = dir + "/child.err";
    std::vector<std::string> all = with({exe}, args);
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid = fork();
    if (pid == 0) {
      const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) _exit(126);
      if (fsize_limit != RLIM_INFINITY) {
        rlimit lim{fsize_limit, fsize_limit};
        if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(125);
      }
      if (write_delay_us) setenv("SPARROW_FAULT_WRITE_DELAY_US", write_delay_us, 1);
      execv(exe.c_str(), argv.data());
      _exit(127);
    }
  }
  // Waits; returns the exit code, or 128 + signal.
  int wait() {
    if (pid > 0) {
      waitpid(pid, &status, 0);
      pid = -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  bool running() {
    if (pid > 0 && waitpid(pid, &status, WNOHANG) == pid) pid = -1;  // reaped: wait() reports it
    return pid > 0;
  }
  int status = 0;
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

// Temp files of checkpoint writers in `dir` (none when it does not exist yet).
std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> t;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) t.push_back(e.path().string());
  return t;
}

// A checkpoint of the ResNet-8 run: parses completely (so it is whole) and holds the model.
void expect_loadable(const std::string& path, const std::string& when) {
  StFile f;
  try {
    f = read_safetensors(path);
  } catch (const std::exception& e) {
    FAIL() << when << ": checkpoint does not load: " << e.what();
  }
  EXPECT_EQ(f.metadata["model"], "resnet8") << when;
  EXPECT_TRUE(f.tensors.count("blocks.0.c1.weight")) << when;
  EXPECT_TRUE(f.tensors.count("fc.weight")) << when;
  EXPECT_TRUE(f.tensors.count("optim.momentum.fc.weight")) << when;
}

bool all_finite(const StFile& f) {
  for (const auto& [name, e] : f.tensors) {
    if (e.dtype != "F32") continue;
    for (float v : st_values<float>(e, name))
      if (!std::isfinite(v)) return false;
  }
  return true;
}

bool same_tensors(const StFile& a, const StFile& b, std::string* which) {
  if (a.tensors.size() != b.tensors.size()) return *which = "tensor count", false;
  for (const auto& [name, e] : a.tensors)
    if (!b.tensors.count(name) || b.tensors.at(name).data != e.data) return *which = name, false;
  return true;
}

}  // namespace

// (1) SIGKILL at 20 to 40 moments, half of them random and half aimed at a checkpoint write in progress (a
// temp file exists): the checkpoint at the path is always complete and loadable once one was ever written,
// and the next run removes the temp files the dead writers left. The child sleeps 2 ms after each write()
// of the temp file (SPARROW_FAULT_WRITE_DELAY_US), so a write takes ~0.1 s on any machine and a kill aimed
// at it lands with the temp file half written, rather than depending on how fast the disk is.
TEST(Faults, SigkillDuringCheckpointWritesNeverBreaksTheCheckpoint) {
  TempDir t;
  const std::string out = t.path + "/run", ck = out + "/train.safetensors";
  const std::vector<std::string> args = with(kRun, {"--epochs", "1000", "--checkpoint-every", "1", "--out", out});
  const char* kDelayUs = "2000";
  std::mt19937 rng(12345);
  bool ever = false;
  int aimed_hits = 0, kills = 0;
  // At least 20 kills, alternating random and aimed, until 5 aimed ones landed inside a write (at most 40:
  // on a loaded machine the test process may wake too late for some).
  for (int i = 0; i < 40 && (i < 20 || aimed_hits < 5); ++i, ++kills) {
    Child c("sparrow-train", i == 0 ? args : with(args, {"--resume"}), t.path, RLIM_INFINITY, kDelayUs);
    bool hit = false;
    if (i % 2 == 0) {
      // Aimed: a random 0-3 ms after a checkpoint temp file is created (inotify), if that write (or its
      // fsync or rename) is still going on.
      const auto deadline = Clock::now() + std::chrono::seconds(30);
      while (!fs::is_directory(out) && Clock::now() < deadline && c.running())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
      ASSERT_GE(fd, 0);
      ASSERT_GE(inotify_add_watch(fd, out.c_str(), IN_CREATE), 0);
      int to_skip = std::uniform_int_distribution<int>(0, 3)(rng);
      alignas(inotify_event) char buf[4096];
      while (!hit && Clock::now() < deadline && c.running()) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        const ssize_t n = read(fd, buf, sizeof buf);
        std::string name;  // the newest checkpoint temp file in this batch of events
        for (ssize_t off = 0; off < n;) {
          const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
          if (ev->len && std::string(ev->name).rfind("train.safetensors.tmp.", 0) == 0) name = ev->name;
          off += ssize_t(sizeof(inotify_event) + ev->len);
        }
        if (name.empty() || to_skip-- > 0) continue;
        std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(rng)));
        hit = fs::exists(out + "/" + name);  // still being written: kill now; else wait for the next one
      }
      close(fd);
    } else {
      std::uniform_int_distribution<int> ms(50, 1500);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms(rng)));
    }
    ASSERT_TRUE(c.running()) << "kill " << i << ": the run ended by itself with " << c.wait() << ": "
                             << slurp(c.err) << slurp(c.out);
    kill(c.pid, SIGKILL);
    hit = hit && !temp_files(out).empty();  // still mid-write when the signal went out
    ASSERT_EQ(c.wait(), 128 + SIGKILL) << slurp(c.err);
    aimed_hits += hit;
    if (fs::exists(ck)) ever = true;
    if (ever) {
      ASSERT_TRUE(fs::exists(ck)) << "kill " << i << ": the checkpoint disappeared";
      expect_loadable(ck, "after kill " + std::to_string(i));
    }
  }
  EXPECT_TRUE(ever) << "no checkpoint was ever written: the kills came too early";
  // Aimed kills must land while a temp file exists often enough, or this test is not testing the write path.
  EXPECT_GE(aimed_hits, 5) << "only " << aimed_hits << " of " << kills / 2 << " aimed kills hit a checkpoint write";
  // The run goes on from the last checkpoint, and cleans up what the killed writers left.
  RunResult r = run_app(
      "sparrow-train", with(kRun, {"--epochs", "1", "--out", out, "--resume"}), t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_loadable(ck, "after the final resume");
  EXPECT_TRUE(temp_files(out).empty()) << temp_files(out).front();
  std::printf("[ kills ] %d kills, %d of %d aimed kills landed during a checkpoint write\n", kills, aimed_hits,
              kills / 2);
}

// (2) A full disk: the resumed run cannot write its next checkpoint (RLIMIT_FSIZE below the checkpoint
// size, as ENOSPC would): one-line error naming the file, non-zero exit, the previous checkpoint byte for
// byte unchanged and loadable, no temp file left.
TEST(Faults, FullDiskIsAClearErrorAndKeepsTheLastGoodCheckpoint) {
  TempDir t;
  const std::string out = t.path + "/run", ck = out + "/train.safetensors";
  ASSERT_EQ(run_app("sparrow-train", with(kRun, {"--epochs", "1", "--out", out}), t.path).code, 0);
  const std::vector<uint8_t> before = read_file_bytes(ck);
  ASSERT_GT(before.size(), 100000u);
  Child c("sparrow-train", with(kRun, {"--epochs", "2", "--checkpoint-every", "2", "--out", out, "--resume"}),
          t.path, before.size() / 2);
  const int code = c.wait();
  RunResult r{code, slurp(c.out), slurp(c.err)};
  expect_one_line_error(r, {ck, "File too large", "checkpoint", "unchanged"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(read_file_bytes(ck), before) << "the previous checkpoint was modified";
  expect_loadable(ck, "after the failed write");
  EXPECT_TRUE(temp_files(out).empty()) << temp_files(out).front();
}

// (3) Real divergence after a normal first epoch, checkpointing every step. --lr 1e30: the weights grow
// huge but finite, the next forward pass overflows, and the non-finite loss stops the run naming the step
// and the first layer where non-finite values appeared. --lr 1e38 --wd 100: one step makes the weights
// themselves infinite while that step's loss was still finite; the checkpoint after it is refused, naming
// the parameter. Either way: one line, non-zero exit, and the last good checkpoint loadable and finite.
TEST(Faults, NonFiniteLossNamesTheStepAndTheLayerAndKeepsTheCheckpoint) {
  struct Case {
    std::vector<std::string> opts;
    std::vector<std::string> said;
    std::string where;  // regex: the step and the layer
  };
  const Case cases[] = {
      {{"--lr", "1e30"},
       {"non-finite loss", "the run stopped"},
       "at epoch 2 step [0-9]+ of phase 'train': first non-finite values in .*(Conv2d|BatchNorm2d|Linear) "
       "'(stem|blocks|fc)[.0-9a-z]*'"},
      {{"--lr", "1e38", "--wd", "100"},
       {"non-finite values in parameter", "checkpoint not written"},
       "parameter '[.0-9a-z_]+' of (Conv2d|BatchNorm2d|Linear) '(stem|blocks|fc)[.0-9a-z]*' after step [0-9]+"},
  };
  for (const Case& k : cases) {
    TempDir t;
    const std::string out = t.path + "/run", ck = out + "/train.safetensors";
    ASSERT_EQ(run_app("sparrow-train", with(kRun, {"--epochs", "1", "--out", out}), t.path).code, 0);
    RunResult r = run_app("sparrow-train",
                          with(with(kRun, {"--epochs", "3", "--checkpoint-every", "1", "--out", out, "--resume"}), k.opts),
                          t.path);
    expect_one_line_error(r, with(k.said, {"the last good checkpoint is " + ck}));
    EXPECT_EQ(r.code, 1);
    EXPECT_TRUE(std::regex_search(r.err, std::regex(k.where))) << "no step and layer (" << k.where << ") in: " << r.err;
    expect_loadable(ck, "after divergence with " + k.opts[1]);
    const StFile f = read_safetensors(ck);
    EXPECT_TRUE(all_finite(f)) << "the kept checkpoint holds non-finite values (--lr " << k.opts[1] << ")";
    EXPECT_GE(std::stoi(f.metadata.at("global_step")), 10);
    std::printf("[ diverge %s ] %s", k.opts[1].c_str(), r.err.c_str());
  }
}

// (4) SIGINT mid-run: exit 130 and a message saying where it saved; the checkpoint loads; --resume then
// finishes with exactly the final weights of an uninterrupted run.
TEST(Faults, SigintSavesExits130AndResumesBitForBit) {
  TempDir t;
  const std::vector<std::string> args =
      with(kData, {"--model", "resnet8", "--epochs", "2", "--threads", "2", "--checkpoint-every", "4"});
  const std::string ref = t.path + "/ref", out = t.path + "/run", ck = out + "/train.safetensors";
  ASSERT_EQ(run_app("sparrow-train", with(args, {"--out", ref}), t.path).code, 0);

  // Slow checkpoint writes (see (1)) keep the run going well past the first checkpoint on any machine.
  Child c("sparrow-train", with(args, {"--out", out}), t.path, RLIM_INFINITY, "2000");
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!fs::exists(ck) && Clock::now() < deadline && c.running())
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(c.running()) << "the run ended before it could be interrupted: " << slurp(c.err);
  kill(c.pid, SIGINT);
  const int code = c.wait();
  const std::string said = slurp(c.out);
  ASSERT_EQ(code, 130) << slurp(c.err);
  EXPECT_NE(said.find("interrupted: saved " + ck), std::string::npos) << said;
  EXPECT_NE(said.find("--resume"), std::string::npos) << said;
  expect_loadable(ck, "after SIGINT");
  const StFile mid = read_safetensors(ck);
  EXPECT_LT(std::stoi(mid.metadata.at("global_step")), 20) << "the interrupted checkpoint must be mid-run";

  RunResult r = run_app("sparrow-train", with(args, {"--out", out, "--resume"}), t.path);
  ASSERT_EQ(r.code, 0) << r.err;
  std::string which;
  EXPECT_TRUE(same_tensors(read_safetensors(ref + "/train.safetensors"), read_safetensors(ck), &which))
      << "tensor " << which << " differs from the uninterrupted run";
}

// (5) Untrusted checkpoints: truncated, a huge header length, forged metadata, and checkpoints of
// another model or other widths are one-line errors saying what is wrong or what differs.
TEST(Faults, UntrustedAndMismatchedCheckpointsAreOneLineErrors) {
  TempDir t;
  const std::string out = t.path + "/run", ck = out + "/train.safetensors";
  ASSERT_EQ(run_app("sparrow-train", with(kRun, {"--epochs", "1", "--out", out}), t.path).code, 0);
  const std::vector<uint8_t> good = read_file_bytes(ck);
  auto put = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string p = t.path + "/" + name;
    write_file_atomic(p, bytes.data(), bytes.size());
    return p;
  };
  // The good one evaluates (costs only: no dataset needed).
  RunResult ok = run_app("sparrow-eval", {ck, "--costs-only"}, t.path);
  ASSERT_EQ(ok.code, 0) << ok.err;

  const std::string cut = put("cut.safetensors", {good.begin(), good.begin() + good.size() / 2});
  expect_one_line_error(run_app("sparrow-eval", {cut, "--costs-only"}, t.path), {cut, "exceed"});

  std::vector<uint8_t> huge = good;
  for (int i = 0; i < 8; ++i) huge[i] = i == 7 ? 0x40 : 0;  // header length 2^62
  const std::string hp = put("huge.safetensors", huge);
  expect_one_line_error(run_app("sparrow-eval", {hp, "--costs-only"}, t.path),
                        {hp, "header length 4611686018427387904 exceeds"});

  std::vector<uint8_t> junk(64, 0xAB);
  const std::string jp = put("junk.safetensors", junk);
  expect_one_line_error(run_app("sparrow-eval", {jp, "--costs-only"}, t.path), {jp, "header length"});

  // Metadata claiming a model far larger than the file: refused before anything is allocated.
  StFile forged = read_safetensors(ck);
  forged.metadata["widths"] = "60000,60000,60000,60000";
  const std::string fp = t.path + "/forged.safetensors";
  write_safetensors(fp, forged);
  expect_one_line_error(run_app("sparrow-eval", {fp, "--costs-only"}, t.path), {fp, "needs at least", "forged"});
  forged.metadata["widths"] = "16,16,32,64";
  forged.metadata["classes"] = "12abc";
  write_safetensors(fp, forged);
  expect_one_line_error(run_app("sparrow-eval", {fp, "--costs-only"}, t.path), {fp, "'classes' = '12abc'"});

  // Another model / other widths than the options ask for.
  expect_one_line_error(
      run_app("sparrow-train", with(kData, {"--epochs", "1", "--checkpoint", ck, "--model", "resnet20"}), t.path),
      {ck, "model: resnet8 vs resnet20"});
  expect_one_line_error(
      run_app("sparrow-train", with(kRun, {"--epochs", "1", "--checkpoint", ck, "--widths", "8,16,32,64"}), t.path),
      {ck, "widths: [16,16,32,64] vs [8,16,32,64]"});
  expect_one_line_error(
      run_app("sparrow-train", with(kData, {"--epochs", "2", "--out", out, "--resume", "--model", "vgg11"}), t.path),
      {ck, "model: resnet8 vs vgg11"});
  // A checkpoint of other widths restored into this run's model: the tensors that differ are named.
  StFile narrow = read_safetensors(ck);
  narrow.metadata["widths"] = "8,16,32,64";
  write_safetensors(fp, narrow);
  expect_one_line_error(run_app("sparrow-eval", {fp, "--costs-only"}, t.path), {fp, "shape"});
}
