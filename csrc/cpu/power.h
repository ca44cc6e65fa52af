// q = s^beta for whole rows of s, written so that the compiler vectorises it.
//
// libm's powf is a call per element that no loop vectoriser can widen, and pow is the only
// transcendental in LRN, so in float it would cost more than all the memory traffic of the
// op. Here float goes through exp2(beta * log2|s|) built from plain arithmetic (Taylor
// series, no table), accurate to a few float ulp, while double keeps std::pow.
// beta == 0.75 (AlexNet, ZFNet, GoogLeNet) is s^(1/2) * s^(1/4): two square roots,
// which are exact in IEEE arithmetic and cheaper still.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../common.h"

namespace fastcnn::cpu {

enum class PowerKind {
  kZero,           // beta == 0: s^0 == 1 for every s, NaN included (as torch.pow)
  kThreeQuarters,  // beta == 0.75
  kGeneral,
};

// The exponent and what the host knows about it, decided once per call.
struct Power {
  PowerKind kind;
  double beta;
  // s^beta = |s|^beta * negative_base_factor for s < 0: -1 for an odd integer beta, 1 for
  // an even one, NaN otherwise (no real power), as std::pow.
  double negative_base_factor;

  explicit Power(double b)
      : kind(b == 0.0 ? PowerKind::kZero
                      : (b == 0.75 ? PowerKind::kThreeQuarters : PowerKind::kGeneral)),
        beta(b),
        negative_base_factor(std::nearbyint(b) != b
                                 ? std::numeric_limits<double>::quiet_NaN()
                                 : (std::fmod(std::fabs(b), 2.0) == 1.0 ? -1.0 : 1.0)) {}
};

template <typename To, typename From>
FASTCNN_INLINE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}

// log2(v) = e + r for v > 0 (finite): e an integer, |r| <= 1/2 accurate to a float ulp.
// v = m * 2^e with m in [sqrt(1/2), sqrt(2)), then ln(m) = 2 atanh(t), t = (m - 1) / (m + 1),
// |t| <= 0.172: five terms of the atanh series leave a truncation error under 1e-9.
FASTCNN_INLINE void log2_parts(float v, float* e, float* r) {
  const bool subnormal = v < std::numeric_limits<float>::min();
  const float w = subnormal ? v * 8388608.0f : v;  // 2^23 lifts subnormals to normals
  const uint32_t bits = bit_cast<uint32_t>(w);
  float m = bit_cast<float>((bits & 0x007fffffu) | 0x3f800000u);  // in [1, 2)
  const bool upper = m > 1.41421356f;
  m = upper ? m * 0.5f : m;
  *e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127) + (upper ? 1.0f : 0.0f) -
       (subnormal ? 23.0f : 0.0f);
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float series =
      1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  *r = (2.0f * t * series) * 1.44269504088896341f;  // ln(m) / ln(2)
}

// 2^z for z = n + f with n an integer (as a double) and |f| <= 1/2 (a little more is fine):
// 2^f = e^(f ln 2) by eight terms of the exponential series (truncation under 6e-9), and
// 2^n as two exact power-of-two factors so results overflow to inf and underflow gradually
// to 0 as they should.
FASTCNN_INLINE float exp2_parts(double n, float f) {
  n = n > 250.0 ? 250.0 : n;
  n = n < -250.0 ? -250.0 : n;
  const float u = f * 0.693147180559945309f;
  const float p =
      1.0f +
      u * (1.0f +
           u * (1.0f / 2 +
                u * (1.0f / 6 +
                     u * (1.0f / 24 + u * (1.0f / 120 + u * (1.0f / 720 + u * (1.0f / 5040)))))));
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2;
  const int32_t n2 = ni - n1;
  const float scale1 = bit_cast<float>(static_cast<uint32_t>(n1 + 127) << 23);
  const float scale2 = bit_cast<float>(static_cast<uint32_t>(n2 + 127) << 23);
  return p * scale1 * scale2;
}

// |s|^beta * (negative_base_factor if s < 0), as std::pow, for float s.
//
// z = beta * log2|s| is formed in double from its parts and from beta in double, so its
// error stays near a float ulp of beta * r instead of growing with |z| (in float alone, or
// with beta rounded to float, it reaches 1e-6..1e-5 relative for |z| near 100).
FASTCNN_INLINE float power_general(float s, double beta, float negative_base_factor) {
  const float a = std::fabs(s);
  float e, r;
  log2_parts(a, &e, &r);
  const double z = beta * e + beta * r;
  const double round_magic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to integer
  double n = (z + round_magic) - round_magic;
  n = n == n ? n : 0.0;  // keep NaN (from beta * inf) out of the integer conversion
  float magnitude = exp2_parts(n, static_cast<float>(z - n));
  // 0, inf and NaN bases: what exp2(beta * log2|s|) gives for them.
  const float inf = std::numeric_limits<float>::infinity();
  const float at_zero = beta > 0.0 ? 0.0f : inf;
  magnitude = a == 0.0f ? at_zero : magnitude;
  magnitude = a == inf ? (beta > 0.0 ? inf : 0.0f) : magnitude;
  magnitude = a != a ? a : magnitude;
  return s < 0.0f ? magnitude * negative_base_factor : magnitude;
}

FASTCNN_INLINE double power_general(double s, double beta, double) { return std::pow(s, beta); }

template <typename T>
FASTCNN_INLINE T power_three_quarters(T s) {
  const T root = std::sqrt(s);
  return root * std::sqrt(root);
}

}  // namespace fastcnn::cpu
