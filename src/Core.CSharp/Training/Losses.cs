using static TorchSharp.torch;

namespace MechInterp.Training;

/// <summary>Next-token losses shared by training and analysis.</summary>
public static class Losses
{
    /// <summary>
    /// Cross-entropy of logits [batch, pos, vocab] predicting tokens[:, 1:] per position → [batch, pos - 1].
    /// </summary>
    public static Tensor PerPosition(Tensor logits, Tensor tokens)
    {
        long batch = logits.shape[0], pos = logits.shape[1], vocab = logits.shape[2];
        var predictions = logits.narrow(1, 0, pos - 1).reshape(-1, vocab);   // [batch * (pos - 1), vocab]
        var targets = tokens.narrow(1, 1, pos - 1).reshape(-1);              // [batch * (pos - 1)]
        return nn.functional.cross_entropy(predictions, targets, reduction: nn.Reduction.None).view(batch, pos - 1);
    }

    /// <summary>Mean next-token loss over the positions the mask [batch, pos - 1] selects.</summary>
    public static Tensor Masked(Tensor logits, Tensor tokens, Tensor mask)
    {
        var perPosition = PerPosition(logits, tokens);
        var weights = mask.to(perPosition.dtype);
        return perPosition.mul(weights).sum().div(weights.sum().clamp_min(1.0));
    }

    /// <summary>Accuracy of the argmax prediction on the masked positions.</summary>
    public static double Accuracy(Tensor logits, Tensor tokens, Tensor mask)
    {
        using var scope = NewDisposeScope();
        long pos = logits.shape[1];
        var predicted = logits.narrow(1, 0, pos - 1).argmax(-1);
        var correct = predicted.eq(tokens.narrow(1, 1, pos - 1)).logical_and(mask);
        return correct.sum().item<long>() / (double)Math.Max(1, mask.sum().item<long>());
    }
}
