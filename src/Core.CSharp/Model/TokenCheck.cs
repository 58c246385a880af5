using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>Token input validation: every error names the problem and the value.</summary>
internal static class TokenCheck
{
    public static Tensor Validate(Tensor tokens, DecoderConfig cfg)
    {
        if (tokens.dtype != ScalarType.Int64 && tokens.dtype != ScalarType.Int32)
            throw new ArgumentException($"tokens must be an integer tensor (int64), got {tokens.dtype}");
        if (tokens.dim() == 1) tokens = tokens.unsqueeze(0);
        if (tokens.dim() != 2)
            throw new ArgumentException($"tokens must be [batch, pos] (or [pos]), got rank {tokens.dim()} shape [{string.Join(", ", tokens.shape)}]");
        long pos = tokens.shape[1];
        if (pos == 0 || tokens.shape[0] == 0)
            throw new ArgumentException($"tokens must not be empty, got shape [{string.Join(", ", tokens.shape)}]");
        if (pos > cfg.n_ctx)
            throw new ArgumentException($"sequence length {pos} exceeds n_ctx ({cfg.n_ctx})");
        if (tokens.dtype != ScalarType.Int64) tokens = tokens.to(ScalarType.Int64);
        long min = tokens.min().item<long>(), max = tokens.max().item<long>();
        if (min < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {min} is negative; ids must be in [0, {cfg.d_vocab})");
        if (max >= cfg.d_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {max} is out of range: d_vocab is {cfg.d_vocab}");
        return tokens;
    }
}
