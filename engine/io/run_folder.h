// The run folder behind `--out DIR`: config.json (every resolved option), metrics.jsonl (one JSON object per
// line, one line per epoch/phase, flushed as written), summary.json, and checkpoints beside them. Whole-file
// writes are atomic (engine/io/atomic_file.h); metrics lines are appended.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sparrow {

// The text every JSON file of the run folder gets (indent < 0: one compact line); a string that is not
// valid UTF-8 is a sparrow::Error ("cannot write JSON: ...").
std::string json_text(const nlohmann::json& value, int indent);

// JSON files with errors that name the file (and the line, for JSON Lines).
nlohmann::json read_json(const std::string& path);
std::vector<nlohmann::json> read_jsonl(const std::string& path);  // a missing file is an Error
void write_json_atomic(const std::string& path, const nlohmann::json& value);  // indented, ends with '\n'
void append_jsonl(const std::string& path, const nlohmann::json& row);         // one compact line

class RunFolder {
 public:
  static constexpr const char* kConfig = "config.json";
  static constexpr const char* kMetrics = "metrics.jsonl";
  static constexpr const char* kSummary = "summary.json";

  explicit RunFolder(std::string dir);  // mkdir -p dir

  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const;  // dir/name

  void write_config(const nlohmann::json& config) const;
  void write_summary(const nlohmann::json& summary) const;
  void append_metrics(const nlohmann::json& row) const;  // must be an object

  nlohmann::json read_config() const;
  nlohmann::json read_summary() const;
  std::vector<nlohmann::json> read_metrics() const;  // empty when metrics.jsonl does not exist yet
  // Replaces metrics.jsonl atomically, e.g. to drop the rows written after the checkpoint a run resumes from.
  void rewrite_metrics(const std::vector<nlohmann::json>& rows) const;

 private:
  std::string dir_;
};

}  // namespace sparrow
