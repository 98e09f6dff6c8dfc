// Sum / mean / bias-corrected EMA of per-weight scores, kept in double.
#include "compress/score_accumulator.h"

#include <cmath>

namespace sparrow {

ScoreAccumulator::ScoreAccumulator(Kind kind, double beta, bool bias_correction)
    : kind_(kind), beta_(beta), bias_correction_(bias_correction) {
  SPARROW_CHECK(beta >= 0 && beta < 1, "score EMA decay must be in [0, 1), got ", beta);
}

void ScoreAccumulator::add(const Scores& s) {
  if (count_ == 0) {
    for (const Tensor& t : s) {
      acc_.emplace_back(size_t(t.numel()), 0.0);
      shapes_.push_back(t.shape());
    }
  }
  SPARROW_CHECK(s.size() == acc_.size(), "ScoreAccumulator: ", s.size(), " score tensors, expected ", acc_.size());
  const double keep = kind_ == Kind::Ema ? beta_ : 1.0, take = kind_ == Kind::Ema ? 1.0 - beta_ : 1.0;
  for (size_t i = 0; i < s.size(); ++i) {
    SPARROW_CHECK(s[i].shape() == shapes_[i], "ScoreAccumulator: scores ", i, " have shape ", s[i].shape_str(),
                  ", expected ", shape_str(shapes_[i]));
    const std::vector<double> v = s[i].to_vector<double>();
    for (size_t j = 0; j < v.size(); ++j) acc_[i][j] = keep * acc_[i][j] + take * v[j];
  }
  ++count_;
}

Scores ScoreAccumulator::value() const {
  SPARROW_CHECK(count_ > 0, "ScoreAccumulator: no scores were added");
  double div = 1.0;
  if (kind_ == Kind::Mean) div = count_;
  if (kind_ == Kind::Ema && bias_correction_) div = 1.0 - std::pow(beta_, count_);
  Scores out;
  for (size_t i = 0; i < acc_.size(); ++i) {
    std::vector<double> v = acc_[i];
    for (double& e : v) e /= div;
    out.push_back(Tensor::from_vector<double>(shapes_[i], v));
  }
  return out;
}

ScoreAccumulator::Kind parse_accumulator(const std::string& s) {
  if (s == "sum") return ScoreAccumulator::Kind::Sum;
  if (s == "mean") return ScoreAccumulator::Kind::Mean;
  if (s == "ema") return ScoreAccumulator::Kind::Ema;
  SPARROW_FAIL("unknown score accumulator '", s, "' (expected sum, mean or ema)");
}

}  // namespace sparrow
