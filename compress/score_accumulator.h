// Scores accumulated over many batches: sum, mean, or exponential moving average with optional bias
// correction (TGOSP: S ← 0.9·S + 0.1·|w ⊙ ∂L/∂w| per mini-batch, read as S / (1 − 0.9^t)).
#pragma once
#include <string>

#include "compress/pruner.h"

namespace sparrow {

class ScoreAccumulator {
 public:
  enum class Kind { Sum, Mean, Ema };
  // beta: EMA decay (S ← β·S + (1−β)·s); bias_correction divides by 1 − β^t as Adam does.
  explicit ScoreAccumulator(Kind kind, double beta = 0.9, bool bias_correction = true);
  void add(const Scores& s);
  Scores value() const;  // F64, one tensor per prunable weight; an error before the first add()
  int count() const { return count_; }

 private:
  Kind kind_;
  double beta_;
  bool bias_correction_;
  int count_ = 0;
  std::vector<std::vector<double>> acc_;
  std::vector<Shape> shapes_;
};

ScoreAccumulator::Kind parse_accumulator(const std::string& s);  // "sum" | "mean" | "ema"

}  // namespace sparrow
