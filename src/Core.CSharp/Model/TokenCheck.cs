using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Token input validation: every error names the problem and the value.</summary>
internal static class TokenCheck
{
    /// <summary>
    /// tokens as the model takes them → [instance, batch, pos] int64. An ordinary model takes [batch, pos] or
    /// [pos]; a batched one [instance, batch, pos], or [batch, pos] for the same tokens in every instance.
    /// </summary>
    public static Tensor Validate(Tensor tokens, DecoderConfig cfg, int? instances)
    {
        if (tokens.dtype != ScalarType.Int64 && tokens.dtype != ScalarType.Int32)
            throw new ArgumentException($"tokens must be an integer tensor (int64), got {tokens.dtype}");
        string Shape() => $"[{string.Join(", ", tokens.shape)}]";
        if (instances is int n)
        {
            if (tokens.dim() == 2) tokens = tokens.unsqueeze(0).expand(n, -1, -1);
            else if (tokens.dim() != 3)
                throw new ArgumentException($"a batched model takes tokens [instance, batch, pos] (or [batch, pos] for every instance), got rank {tokens.dim()} shape {Shape()}");
            else if (tokens.shape[0] != n)
                throw new ArgumentException($"tokens {Shape()} have {tokens.shape[0]} instances but the model has {n}");
        }
        else
        {
            if (tokens.dim() == 1) tokens = tokens.unsqueeze(0);
            if (tokens.dim() != 2)
                throw new ArgumentException($"tokens must be [batch, pos] (or [pos]), got rank {tokens.dim()} shape {Shape()}");
            tokens = tokens.unsqueeze(0);
        }
        long pos = tokens.shape[2];
        if (pos == 0 || tokens.shape[1] == 0)
            throw new ArgumentException($"tokens must not be empty, got shape {Shape()}");
        if (pos > cfg.n_ctx)
            throw new ArgumentException($"sequence length {pos} exceeds n_ctx ({cfg.n_ctx})");
        if (tokens.dtype != ScalarType.Int64) tokens = tokens.to(ScalarType.Int64);
        long min = tokens.min().item<long>(), max = tokens.max().item<long>();
        if (min < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {min} is negative; ids must be in [0, {cfg.d_vocab})");
        if (max >= cfg.d_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {max} is out of range: d_vocab is {cfg.d_vocab}");
        return tokens;
    }
}
