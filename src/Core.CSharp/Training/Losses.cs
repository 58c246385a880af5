using static TorchSharp.torch;

namespace MechInterp.Training;

/// <summary>
/// Next-token losses shared by training and analysis. Each takes an ordinary model's logits [batch, pos, vocab]
/// with tokens [batch, pos], or a batched model's [instance, batch, pos, vocab] with tokens [instance, batch, pos].
/// </summary>
public static class Losses
{
    /// <summary>
    /// Cross-entropy of logits [.., pos, vocab] predicting tokens[.., 1:] per position → [.., pos − 1].
    /// </summary>
    public static Tensor PerPosition(Tensor logits, Tensor tokens)
    {
        long pos = logits.shape[^2], vocab = logits.shape[^1];
        if (tokens.dim() != logits.dim() - 1 || !tokens.shape.SequenceEqual(logits.shape[..^1]))
            throw new ArgumentException($"tokens [{string.Join(", ", tokens.shape)}] must match the logits' leading dimensions [{string.Join(", ", logits.shape[..^1])}]");
        var predictions = logits.narrow(-2, 0, pos - 1).reshape(-1, vocab);   // [(..)·(pos − 1), vocab]
        var targets = tokens.narrow(-1, 1, pos - 1).reshape(-1);             // [(..)·(pos − 1)]
        var lead = tokens.shape[..^1];
        return nn.functional.cross_entropy(predictions, targets, reduction: nn.Reduction.None).view([.. lead, pos - 1]);
    }

    /// <summary>
    /// Mean next-token loss over the positions the mask [.., pos − 1] selects: a scalar for an ordinary model's
    /// logits, one per instance [instance] for a batched model's.
    /// </summary>
    public static Tensor Masked(Tensor logits, Tensor tokens, Tensor mask)
    {
        var perPosition = PerPosition(logits, tokens);
        var weights = mask.to(perPosition.dtype);
        if (logits.dim() == 4)
            return perPosition.mul(weights).sum([1L, 2L]).div(weights.sum([1L, 2L]).clamp_min(1.0));   // [instance]
        return perPosition.mul(weights).sum().div(weights.sum().clamp_min(1.0));
    }

    /// <summary>Accuracy of the argmax prediction on the masked positions (over all instances of a batched model).</summary>
    public static double Accuracy(Tensor logits, Tensor tokens, Tensor mask)
    {
        using var scope = NewDisposeScope();
        long pos = logits.shape[^2];
        var predicted = logits.narrow(-2, 0, pos - 1).argmax(-1);
        var correct = predicted.eq(tokens.narrow(-1, 1, pos - 1)).logical_and(mask);
        return correct.sum().item<long>() / (double)Math.Max(1, mask.sum().item<long>());
    }
}
