/* sample.h - next-token sampling: greedy, temperature, top-k, top-p (nucleus).
 *
 * Order as in llama.cpp's default chain (common/sampling.cpp): top-k ->
 * top-p -> temperature -> softmax -> draw. temperature <= 0 means greedy
 * (argmax, lowest id on ties). Random numbers from xorshift64*, seeded, so a
 * given seed reproduces the same tokens.
 */
#ifndef G4_SAMPLE_H
#define G4_SAMPLE_H

#include <stdint.h>

typedef struct g4_sampler {
    float temperature;   /* <= 0: greedy */
    int32_t top_k;       /* <= 0 or >= n_vocab: disabled */
    float top_p;         /* >= 1: disabled */
    uint64_t rng_state;  /* set by g4_sampler_init */
    /* scratch owned by the sampler, grown on demand */
    void *scratch;
    int32_t scratch_n;
} g4_sampler;

void g4_sampler_init(g4_sampler *s, float temperature, int32_t top_k, float top_p, uint64_t seed);
void g4_sampler_free(g4_sampler *s);
/* Pick the next token from logits[n_vocab] (float32; may be modified).
 * Returns the id, or -1 when scratch allocation fails. */
int32_t g4_sample(g4_sampler *s, float *logits, int32_t n_vocab);
int32_t g4_argmax(const float *x, int32_t n);

#endif
