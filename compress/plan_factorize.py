"""What factorizing one target holds for a while, for plan's peak memory (plan_statistics.svd_statistics
counts it at an svd pass's widest target): its float64 temporaries, counted from the code of the
svd pass's factorization (svd_stages.factorize, svd_layer.compress_layer, linalg, linalg_steps)."""

from __future__ import annotations

from compress.passes.svd_targets import uses_output_gram

# Factorizing a target on its output Gram (out, out) holds at most this many float64 (g, g + o)
# matrices, g = out, o = in (peak RSS over compress_layer, one thread: 4.9-5.8 for output Grams of
# 9000-wide inputs). Input Grams: `factorize_bytes`, counted from the code.
OUTPUT_GRAM_COPIES = 6


def factorize_bytes(out: int, inp: int, output_gram: bool, asymmetric: bool, centered: bool) -> int:
    """Bytes of the float64 temporaries factorizing one (out, inp) target holds beside its statistics
    and its output Fisher's square roots (svd_stages.factorize: the asymmetric step, then
    svd_layer.compress_layer), the largest of its phases, each counted from the code in (g, g)
    matrices, g = inp the side of its input Gram, (o, g) ones, o = out, and (o, o) ones:
    - the asymmetric fit (`asymmetric`), its report record (_fit_record, linalg_steps.asymmetric_excess):
      the symmetrized Gram, eigh's copy, eigenvectors and LAPACK workspace (2), 5, with 3 more where
      `centered` (the centered Gram layer_math keeps, the centered moments G_c and C_c); the
      asymmetric step before it holds fewer (4, 7 centered); beside them up to 14 (o, g): the step,
      W + Δ, the factors' down before and after balancing, W, the approximation, R W, B and the fit
      before and after the output weighting R, the SVD's copy and workspace;
    - decompose (linalg.decompose), on the input side where inp < out: the symmetrized and
      equilibrated Grams, eigh's 4, 6 (7 centered), and up to 16 (o, g): the weight, W D, W S, the
      SVD's copy, workspace and U, the basis and factors, the measured losses' errors; on the output
      side, 2 (3 centered), 10 (o, g) and 6 (o, o): H = W G Wᵀ, eigh's copy, eigenvectors and
      workspace, the flipped and kept eigenvectors; one (o, g) more where fitted (the step, kept).
    Peak RSS over factorizing (tools/bench_factorize_memory.py: one thread, freed memory given back,
    less the 4 MiB a 64-wide target shows): 0.79-0.97 of this for fitted targets 256 to 2560 wide,
    0.5-0.7 for others. An output Gram (g = out, o = inp): OUTPUT_GRAM_COPIES (g, g + o)."""
    if output_gram:
        return OUTPUT_GRAM_COPIES * 8 * out * (out + inp)
    g, o, c, a = inp, out, int(centered), int(asymmetric)
    fit = (5 + 3 * c) * g * g + 14 * o * g if asymmetric else 0
    side = (6 + c) * g * g + (16 + a) * o * g if inp < out else (2 + c) * g * g + (10 + a) * o * g + 6 * o * o
    return 8 * max(fit, side)


def factorizing_bytes(config):
    """info -> factorize_bytes of a target of an svd pass with `config` (None: fitted to the
    reference where its statistics are paired, uncentered)."""
    from compress.passes.svd_decisions import fitted_to_reference
    from compress.passes.svd_checks import centered

    def size(info, paired: bool = True) -> int:
        asymmetric = fitted_to_reference(config, info) if config is not None else paired
        return factorize_bytes(info.out_features, info.in_features, uses_output_gram(info),
                               asymmetric and not uses_output_gram(info),
                               centered(config, info) if config is not None else False)
    return size
