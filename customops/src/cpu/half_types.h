// Host-side float16 / bfloat16 storage types with round-to-nearest-even conversions. Layout-compatible with
// Ort::Float16_t / Ort::BFloat16_t and CUDA's __half / __nv_bfloat16 (one uint16_t), so tensors are shared as is.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace xlstm {

struct Fp16 {
  uint16_t bits;
};
struct Bf16 {
  uint16_t bits;
};

inline float ToFloat(float x) { return x; }

inline float ToFloat(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float ToFloat(Fp16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  const uint32_t mant = x.bits & 0x3ffu;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal: mant · 2^-24, exact
    return sign ? -f : f;
  }
  uint32_t u = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((exp + 112u) << 23) | (mant << 13));
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T FromFloat(float f);

template <>
inline float FromFloat<float>(float f) {
  return f;
}

template <>
inline Bf16 FromFloat<Bf16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

template <>
inline Fp16 FromFloat<Fp16>(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return Fp16{static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (x >= 0x477ff000u) return Fp16{static_cast<uint16_t>(sign | 0x7c00u)};  // ≥ 65520 rounds to infinity
  if (x < 0x38800000u) {                                                      // below 2^-14: subnormal or zero
    float a;
    std::memcpy(&a, &x, 4);
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(a * 16777216.0f));  // a · 2^24, RNE; 1024 is the smallest normal
    return Fp16{static_cast<uint16_t>(sign | m)};
  }
  uint32_t h = (((x >> 23) - 112u) << 10) | ((x >> 13) & 0x3ffu);
  const uint32_t rest = x & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // a carry into the exponent is the right result
  return Fp16{static_cast<uint16_t>(sign | h)};
}

/// Rounds a float to the precision of T and back (what storing in T does to a value).
template <typename T>
inline float RoundTrip(float f) {
  return ToFloat(FromFloat<T>(f));
}

}  // namespace xlstm
