// The apps' data bundle: --limit-train/--limit-test subsets and the validation split, which is always
// carved from the held-out part of the training set and scales with --limit-train.
#include <gtest/gtest.h>

#include "apps/common/data.h"
#include "apps/common/options.h"

using namespace sparrow;

TEST(AppData, ValidationSplitScalesWithLimitTrain) {
  CommonOptions o;
  o.dataset = "synthetic";
  const DataBundle full = load_data(o, 0.1);
  const DataBundle none = load_data(o, 0.0);
  ASSERT_GT(none.train.n, 100);
  // No limit: 10% of every class held out (stratified), the rest trains.
  EXPECT_EQ(full.train.n + full.val.n, none.train.n);
  EXPECT_NEAR(double(full.val.n), 0.1 * none.train.n, none.train.classes);
  EXPECT_EQ(none.val.n, 0);

  o.limit_train = 90;
  o.limit_test = 17;
  const DataBundle small = load_data(o, 0.1);
  EXPECT_EQ(small.train.n, 90);
  EXPECT_EQ(small.val.n, 10);  // 90 · 0.1 / 0.9: the same share of the limited set
  EXPECT_EQ(small.test.n, 17);
  o.limit_train = 5;
  EXPECT_EQ(load_data(o, 0.5).val.n, 5);
  EXPECT_EQ(load_data(o, 0.01).val.n, 1);  // never empty when asked for
}

TEST(AppData, BadValidationFractionIsAnError) {
  CommonOptions o;
  o.dataset = "synthetic";
  EXPECT_THROW(load_data(o, 1.0), Error);
  EXPECT_THROW(load_data(o, -0.1), Error);
}
