// CPU kernels against a plain double-precision recurrence, and the properties the runtime relies on: a prompt fed
// in pieces equals the whole, HF's schedule, float16/bfloat16 inputs, threading.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "mlstm_test_util.h"

namespace xlstm::test {
namespace {

// float32 chunkwise against the double recurrence: rounding of float32 sums over DQK·L terms and of exp; observed
// ≤ ~1e-6, so 2e-5 leaves room without hiding a wrong term (those give errors of order 1).
constexpr double kF32Tol = 2e-5;

void ExpectClose(const Result& a, const Result& b, double tol, const std::string& what) {
  const Error eh = Compare(a.h, b.h), ec = Compare(a.c, b.c), en = Compare(a.n, b.n), em = Compare(a.m, b.m);
  EXPECT_TRUE(eh.finite && ec.finite && en.finite && em.finite) << what;
  EXPECT_LE(eh.scaled_max, tol) << what << " h: " << eh.ToString();
  EXPECT_LE(ec.scaled_max, tol) << what << " C: " << ec.ToString();
  EXPECT_LE(en.scaled_max, tol) << what << " n: " << en.ToString();
  EXPECT_LE(em.scaled_max, tol) << what << " m: " << em.ToString();
}

// (S, L, MIC, random initial state)
class ChunkwiseVsRecurrent : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool>> {};

TEST_P(ChunkwiseVsRecurrent, MatchesThePlainRecurrence) {
  const auto [S, L, MIC, random_state] = GetParam();
  const Problem p = MakeProblem(2, 3, S, 16, 24, L, 7u + static_cast<uint32_t>(S), random_state, MIC);
  ExpectClose(RunCpu(p), RecurrentReference(p), kF32Tol, "S=" + std::to_string(S) + " L=" + std::to_string(L));
}

// lengths of one token, below a chunk, one to three chunks plus remainders, and HF's segmentation
INSTANTIATE_TEST_SUITE_P(Lengths, ChunkwiseVsRecurrent,
                         ::testing::Values(std::make_tuple(1, 16, 16384, true), std::make_tuple(1, 16, 16384, false),
                                           std::make_tuple(5, 16, 16384, true), std::make_tuple(15, 16, 16384, false),
                                           std::make_tuple(16, 16, 16384, true), std::make_tuple(17, 16, 16384, true),
                                           std::make_tuple(32, 16, 16384, false), std::make_tuple(40, 16, 16384, true),
                                           std::make_tuple(48, 16, 16384, true), std::make_tuple(53, 16, 16384, false),
                                           std::make_tuple(64, 1, 16384, true),   // chunks of one token
                                           std::make_tuple(61, 8, 20, true),      // segments 20+20+20+1
                                           std::make_tuple(40, 8, 20, false),     // segments end on chunk edges
                                           std::make_tuple(130, 64, 16384, true)));

TEST(MLstmCpu, PromptFedInPiecesEqualsTheWhole) {
  const Problem whole = MakeProblem(2, 2, 100, 16, 20, 16, 11u);
  const Result all = RunCpu(whole);
  for (int64_t split : {1, 16, 37, 64, 99}) {
    const Problem a = Slice(whole, 0, split, whole.c0, whole.n0, whole.m0);
    const Result ra = RunCpu(a);
    const Problem b = Slice(whole, split, whole.S, ra.c, ra.n, ra.m);
    const Result rb = RunCpu(b);
    Result joined;
    joined.c = rb.c, joined.n = rb.n, joined.m = rb.m;
    for (int64_t h = 0; h < whole.Heads(); ++h) {
      joined.h.insert(joined.h.end(), ra.h.begin() + h * a.S * a.DV, ra.h.begin() + (h + 1) * a.S * a.DV);
      joined.h.insert(joined.h.end(), rb.h.begin() + h * b.S * b.DV, rb.h.begin() + (h + 1) * b.S * b.DV);
    }
    // different chunk boundaries: the same math in another rounding order
    ExpectClose(joined, all, kF32Tol, "split at " + std::to_string(split));
  }
}

// With a bfloat16 state the state is rounded after every piece of the schedule (mlstm_params.h), so a prompt fed in
// pieces that end on piece boundaries (chunk ends counted from the start, recurrent tokens) gives exactly the bits of
// one call: what lets the serving engine read prompts in pieces under load and in one call alone.
TEST(MLstmCpu, WithABf16StatePiecesOnPieceBoundariesGiveTheWholeBitForBit) {
  Problem whole = MakeProblem(2, 2, 45, 16, 20, 16, 13u, true, 40);  // chunks of 16 in segments of 40: chunks, tails, a second segment
  for (auto& x : whole.c0) x = RoundTrip<Bf16>(x);
  for (auto& x : whole.n0) x = RoundTrip<Bf16>(x);
  const Result all = RunCpu(whole, Dtype::kFloat32, SerialFor, false, true);
  for (int64_t split : {16, 32, 36, 40, 44}) {  // chunk ends, tail tokens, the segment end
    const Problem a = Slice(whole, 0, split, whole.c0, whole.n0, whole.m0);
    const Result ra = RunCpu(a, Dtype::kFloat32, SerialFor, false, true);
    const Problem b = Slice(whole, split, whole.S, ra.c, ra.n, ra.m);
    const Result rb = RunCpu(b, Dtype::kFloat32, SerialFor, false, true);
    EXPECT_EQ(rb.c, all.c) << "split at " << split;
    EXPECT_EQ(rb.n, all.n) << "split at " << split;
    EXPECT_EQ(rb.m, all.m) << "split at " << split;
    for (int64_t h = 0; h < whole.Heads(); ++h) {
      for (int64_t t = split; t < whole.S; ++t) {
        for (int64_t e = 0; e < whole.DV; ++e) {
          ASSERT_EQ(rb.h[(h * b.S + t - split) * b.DV + e], all.h[(h * whole.S + t) * whole.DV + e]) << "split " << split << " t " << t;
        }
      }
    }
  }
  // and the rounding is there: without it the same call differs
  const Result plain = RunCpu(whole);
  EXPECT_NE(plain.c, all.c);
}

TEST(MLstmCpu, TokenByTokenDecodeEqualsThePrompt) {
  const Problem whole = MakeProblem(1, 2, 24, 8, 12, 8, 5u);
  const Result all = RunCpu(whole);
  std::vector<float> c = whole.c0, n = whole.n0, m = whole.m0;
  std::vector<float> h(all.h.size());
  for (int64_t t = 0; t < whole.S; ++t) {
    const Result r = RunCpu(Slice(whole, t, t + 1, c, n, m), Dtype::kFloat32, SerialFor, /*step=*/true);
    for (int64_t hh = 0; hh < whole.Heads(); ++hh) {
      std::copy_n(&r.h[hh * whole.DV], whole.DV, &h[(hh * whole.S + t) * whole.DV]);
    }
    c = r.c, n = r.n, m = r.m;
  }
  ExpectClose(Result{h, c, n, m}, all, kF32Tol, "24 steps");
}

// The graph masks padding by ĩ = −inf, f̃ = +inf (attention_mask): such a token must leave C, n, m exactly as they
// were, so a left-padded prompt ends in the state of the unpadded one.
TEST(MLstmCpu, MaskedTokensLeaveTheStateUntouched) {
  const Problem real = MakeProblem(1, 2, 37, 16, 20, 16, 17u);
  const int64_t pad = 11;
  Problem padded = Slice(real, 0, real.S, real.c0, real.n0, real.m0);
  padded.S = real.S + pad;
  padded.q.assign(real.Heads() * padded.S * real.DK, 0.5f), padded.k = padded.q;
  padded.v.assign(real.Heads() * padded.S * real.DV, -0.25f);
  padded.i.assign(real.Heads() * padded.S, -INFINITY), padded.f.assign(real.Heads() * padded.S, INFINITY);
  for (int64_t h = 0; h < real.Heads(); ++h) {
    std::copy_n(&real.q[h * real.S * real.DK], real.S * real.DK, &padded.q[(h * padded.S + pad) * real.DK]);
    std::copy_n(&real.k[h * real.S * real.DK], real.S * real.DK, &padded.k[(h * padded.S + pad) * real.DK]);
    std::copy_n(&real.v[h * real.S * real.DV], real.S * real.DV, &padded.v[(h * padded.S + pad) * real.DV]);
    std::copy_n(&real.i[h * real.S], real.S, &padded.i[h * padded.S + pad]);
    std::copy_n(&real.f[h * real.S], real.S, &padded.f[h * padded.S + pad]);
  }
  const Result a = RunCpu(real), b = RunCpu(padded);
  Result b_real;
  b_real.c = b.c, b_real.n = b.n, b_real.m = b.m;
  for (int64_t h = 0; h < real.Heads(); ++h) {
    b_real.h.insert(b_real.h.end(), b.h.begin() + (h * padded.S + pad) * real.DV, b.h.begin() + (h + 1) * padded.S * real.DV);
  }
  ExpectClose(b_real, a, kF32Tol, "11 masked tokens in front");  // other chunk boundaries, same math
  const Result one = RunCpu(Slice(padded, 0, 1, real.c0, real.n0, real.m0), Dtype::kFloat32, SerialFor, /*step=*/true);
  EXPECT_EQ(one.c, real.c0);
  EXPECT_EQ(one.n, real.n0);
  EXPECT_EQ(one.m, real.m0);
}

TEST(MLstmCpu, StepOpEqualsChunkwiseOpAtOneToken) {
  const Problem p = MakeProblem(3, 2, 1, 16, 16, 64, 3u);
  const Result a = RunCpu(p, Dtype::kFloat32, SerialFor, /*step=*/true), b = RunCpu(p);
  EXPECT_EQ(a.h, b.h);
  EXPECT_EQ(a.c, b.c);
  EXPECT_EQ(a.n, b.n);
  EXPECT_EQ(a.m, b.m);
}

TEST(MLstmCpu, StepOpRejectsMoreThanOneToken) {
  const Problem p = MakeProblem(1, 1, 2, 8, 8, 8, 1u);
  EXPECT_THROW(RunCpu(p, Dtype::kFloat32, SerialFor, /*step=*/true), std::invalid_argument);
}

TEST(MLstmCpu, ScheduleIsHfs) {
  // S = 61, L = 8, segments of 20: three segments of 2 chunks + 4 recurrent tokens, then a segment of one token
  std::vector<std::pair<int64_t, bool>> pieces;
  for (int64_t t = 0; t < 61;) {
    const int64_t len = SchedulePiece(t, 61, 8, 20, 64);
    pieces.emplace_back(len, ScheduleIsChunk(t, 61, 8, 20));
    t += len;
  }
  std::vector<std::pair<int64_t, bool>> expected;
  for (int seg = 0; seg < 3; ++seg) {
    expected.insert(expected.end(), {{8, true}, {8, true}, {1, false}, {1, false}, {1, false}, {1, false}});
  }
  expected.push_back({1, false});
  EXPECT_EQ(pieces, expected);
  EXPECT_EQ(SchedulePiece(0, 300, 128, 16384, 64), 64);   // a chunk larger than the kernel's tile is split
  EXPECT_EQ(SchedulePiece(64, 300, 128, 16384, 64), 64);
  EXPECT_EQ(SchedulePiece(256, 300, 128, 16384, 64), 1);  // 300 = 2·128 + 44 recurrent tokens
}

// The table the C# Schedule is tested against too (tests/golden/hf_schedule.txt): "S L SEGMENT: C8x2 R1x5 ...".
TEST(MLstmCpu, ScheduleEqualsTheSharedTable) {
  std::ifstream table(XLSTM_SCHEDULE_TABLE);
  ASSERT_TRUE(table.good()) << "cannot read " << XLSTM_SCHEDULE_TABLE;
  int cases = 0;
  for (std::string line; std::getline(table, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    int64_t S = 0, L = 0, segment = 0;
    char colon = 0;
    in >> S >> L >> segment >> colon;
    ASSERT_EQ(colon, ':') << line;
    std::string runs;
    std::string last;
    int count = 0;
    auto flush = [&] {
      if (count > 0) runs += (runs.empty() ? "" : " ") + last + "x" + std::to_string(count);
    };
    for (int64_t t = 0; t < S;) {
      const int64_t len = SchedulePiece(t, S, L, segment, /*max_piece=*/L);
      const std::string kind = (ScheduleIsChunk(t, S, L, segment) ? "C" : "R") + std::to_string(len);
      if (kind == last) {
        ++count;
      } else {
        flush();
        last = kind, count = 1;
      }
      t += len;
    }
    flush();
    std::string expected;
    std::getline(in >> std::ws, expected);
    EXPECT_EQ(runs, expected) << "S=" << S << " L=" << L << " segment=" << segment;
    ++cases;
  }
  EXPECT_GE(cases, 100) << XLSTM_SCHEDULE_TABLE;
}

TEST(MLstmCpu, ThreadedEqualsSerial) {
  const Problem p = MakeProblem(3, 4, 45, 16, 16, 16, 9u);
  const Result a = RunCpu(p, Dtype::kFloat32, SerialFor), b = RunCpu(p, Dtype::kFloat32, ThreadedFor(4));
  EXPECT_EQ(a.h, b.h);
  EXPECT_EQ(a.c, b.c);
  EXPECT_EQ(a.n, b.n);
  EXPECT_EQ(a.m, b.m);
}

/// Where h is ill-conditioned (exp(−m) ~ 1e-6 and q·n near zero) no float32 form keeps 2e-5; there the chunkwise
/// form must be no worse than the float32 recurrent form (every token a recurrent step) against the double one.
void ExpectAsGoodAsRecurrent(const Problem& p, const std::string& what) {
  Problem recurrent = p;
  recurrent.L = p.S + 1;  // no whole chunk: every token in the recurrent form
  const Result ref = RecurrentReference(p), rec = RunCpu(recurrent);
  auto tol = [](const Error& baseline) { return std::max(kF32Tol, 4.0 * baseline.scaled_max); };
  ExpectClose(RunCpu(p), ref, std::max({tol(Compare(rec.h, ref.h)), tol(Compare(rec.c, ref.c)), tol(Compare(rec.n, ref.n))}), what);
}

TEST(MLstmCpu, StressGatesAsGoodAsTheRecurrentForm) {
  for (int64_t S : {1, 17, 64, 130}) {
    for (int64_t L : {1, 16, 64}) {
      ExpectAsGoodAsRecurrent(MakeProblem(2, 3, S, 16, 24, L, 31u + static_cast<uint32_t>(S + L), true, 16384, Gates::kStress),
                              "stress S=" + std::to_string(S) + " L=" + std::to_string(L));
    }
  }
}

TEST(MLstmCpu, GatesAtTheSoftCapStayFinite) {
  Problem p = MakeProblem(1, 2, 150, 16, 16, 16, 13u, /*random_state=*/false);
  for (size_t x = 0; x < p.i.size(); ++x) {
    p.i[x] = (x % 3 == 0) ? 15.0f : -15.0f;
    p.f[x] = (x % 5 == 0) ? -15.0f : 15.0f;
  }
  ExpectAsGoodAsRecurrent(p, "capped gates");
}

// float16 / bfloat16 q, k, v: the kernel converts to float32 on load and rounds only h on store. So against the
// float32 kernel on the same (rounded) inputs the states are bit-identical and h differs by one rounding of h
// (2^-11 relative for float16, 2^-8 for bfloat16). Against the unrounded float32 inputs the difference is the input
// rounding itself, with model-like gates: stated bounds rel-L2 ≤ 2e-3 (float16) and 1e-2 (bfloat16) (observed
// ~4e-4 and ~3.5e-3).
class HalfInputs : public ::testing::TestWithParam<Dtype> {};

TEST_P(HalfInputs, MatchFloat32OnTheSameValues) {
  const Dtype dtype = GetParam();
  const Problem exact = MakeProblem(2, 2, 70, 16, 24, 16, 21u);
  const Problem rounded = RoundedTo(exact, dtype);
  const Result half = RunCpu(rounded, dtype), f32 = RunCpu(rounded);
  EXPECT_EQ(half.c, f32.c);
  EXPECT_EQ(half.n, f32.n);
  EXPECT_EQ(half.m, f32.m);
  const double h_round = dtype == Dtype::kFloat16 ? 1.0 / 2048 : 1.0 / 256;
  for (size_t x = 0; x < half.h.size(); ++x) {
    ASSERT_NEAR(half.h[x], f32.h[x], h_round * std::fabs(f32.h[x]) + 1e-7) << "h[" << x << "]";
  }
  const double input_tol = dtype == Dtype::kFloat16 ? 2e-3 : 1e-2;
  const Result ref = RunCpu(exact);
  EXPECT_LE(Compare(half.h, ref.h).rel_l2, input_tol) << DtypeName(dtype);
  EXPECT_LE(Compare(half.c, ref.c).rel_l2, input_tol) << DtypeName(dtype);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, HalfInputs, ::testing::Values(Dtype::kFloat16, Dtype::kBFloat16),
                         [](const auto& info) { return std::string(DtypeName(info.param)); });

TEST(HalfTypes, RoundTripsExactly) {
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, 3.140625f}) {
    EXPECT_EQ(ToFloat(FromFloat<Fp16>(x)), x) << x;
  }
  for (float x : {0.0f, 1.0f, -2.5f, 3.140625f, 1.0e30f}) EXPECT_EQ(ToFloat(FromFloat<Bf16>(x)), RoundTrip<Bf16>(x)) << x;
  EXPECT_EQ(FromFloat<Fp16>(1.0f).bits, 0x3c00);
  EXPECT_EQ(FromFloat<Fp16>(65520.0f).bits, 0x7c00);               // rounds to infinity
  EXPECT_EQ(FromFloat<Fp16>(1.0f + 1.0f / 2048).bits, 0x3c00);      // tie to even
  EXPECT_EQ(FromFloat<Fp16>(1.0f + 3.0f / 2048).bits, 0x3c02);      // tie to even, upwards
  EXPECT_EQ(FromFloat<Bf16>(1.0f).bits, 0x3f80);
  EXPECT_EQ(FromFloat<Bf16>(1.00390625f).bits, 0x3f80);             // 1 + 2^-8: tie to even
}

}  // namespace
}  // namespace xlstm::test
