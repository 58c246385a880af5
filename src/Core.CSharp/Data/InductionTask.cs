using static TorchSharp.torch;

namespace MechInterp.Data;

/// <summary>
/// Repeated random tokens. Each sequence is BOS then 2·<see cref="MaxRepeat"/> random tokens in which a
/// segment r_1..r_L appears twice in a row: noise, r_1..r_L, r_1..r_L, noise. L is drawn per sequence from
/// [<see cref="MinRepeat"/>, <see cref="MaxRepeat"/>] and the segment starts at a random offset, so the earlier
/// copy of a token is not at a fixed distance: only induction (find the earlier occurrence of the current
/// token, copy what followed it) predicts the repeat. With MinRepeat = MaxRepeat the layout is fixed
/// (TransformerLens's repeated-tokens evaluation): BOS, r, r, and a head can copy by position alone.
/// BOS is token 0; random tokens are drawn from [1, vocab).
/// </summary>
public sealed class InductionTask : ITokenTask, ITokenizer
{
    private Dictionary<string, int>? byName;

    /// <summary>BOS, the first token of every sequence.</summary>
    public int? BosToken => Bos;

    /// <summary>A readable name for a token id: "BOS" for 0, "t{id}" for the random tokens.</summary>
    public string TokenText(int id) =>
        id == Bos ? "BOS" : id > 0 && id < VocabSize ? $"t{id}" : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id must be in [0, {VocabSize}), got {id}");

    /// <summary>Token names separated by spaces ("BOS t3 t7") → ids.</summary>
    public IReadOnlyList<int> Encode(string text) => NamedTokens.Encode(text, VocabSize, TokenText, ref byName);

    public string Decode(IEnumerable<int> ids) => NamedTokens.Decode(ids, TokenText);

    public const int Bos = 0;
    public const string SegmentFeature = "segment";
    /// <summary>Ids of <see cref="SegmentFeature"/>: noise is random filler, first the segment's first copy.</summary>
    public const long SegmentBos = 0, SegmentNoise = 1, SegmentFirst = 2, SegmentRepeat = 3;

    /// <param name="vocabSize">Token ids are [0, vocabSize); 0 is BOS.</param>
    /// <param name="maxRepeat">Longest segment; the sequence has 1 + 2·maxRepeat tokens.</param>
    /// <param name="minRepeat">Shortest segment (default maxRepeat / 2, at least 2).</param>
    public InductionTask(int vocabSize, int maxRepeat, int? minRepeat = null)
    {
        if (vocabSize < 3) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, $"vocab size must be at least 3, got {vocabSize}");
        Batches.RequirePositive(maxRepeat, nameof(maxRepeat));
        int min = minRepeat ?? Math.Min(maxRepeat, Math.Max(2, maxRepeat / 2));
        if (min < 1 || min > maxRepeat)
            throw new ArgumentOutOfRangeException(nameof(minRepeat), min, $"minRepeat must be in [1, maxRepeat = {maxRepeat}], got {min}");
        VocabSize = vocabSize;
        MaxRepeat = maxRepeat;
        MinRepeat = min;
    }

    public string Name => "induction";
    public int VocabSize { get; }
    public int MaxRepeat { get; }
    public int MinRepeat { get; }
    public int SequenceLength => 1 + 2 * MaxRepeat;
    public IReadOnlyDictionary<string, string[]> Features { get; } =
        new Dictionary<string, string[]> { [SegmentFeature] = ["bos", "noise", "first", "repeat"] };

    public TokenBatch Sample(int batchSize, Random rng)
    {
        Batches.RequirePositive(batchSize, nameof(batchSize));
        var tokens = new long[batchSize, SequenceLength];
        var mask = new bool[batchSize, SequenceLength - 1];
        var segment = new long[batchSize, SequenceLength];
        for (int b = 0; b < batchSize; b++)
        {
            int length = rng.Next(MinRepeat, MaxRepeat + 1);
            int start = 1 + rng.Next(0, 2 * (MaxRepeat - length) + 1);
            tokens[b, 0] = Bos;
            segment[b, 0] = SegmentBos;
            for (int p = 1; p < SequenceLength; p++)
            {
                bool first = p >= start && p < start + length, repeat = p >= start + length && p < start + 2 * length;
                tokens[b, p] = repeat ? tokens[b, p - length] : rng.Next(1, VocabSize);
                segment[b, p] = first ? SegmentFirst : repeat ? SegmentRepeat : SegmentNoise;
            }
            for (int p = 0; p < SequenceLength - 1; p++) mask[b, p] = true;
        }
        return new TokenBatch(Batches.Int64(tokens), Batches.Mask(mask),
            new Dictionary<string, Tensor> { [SegmentFeature] = Batches.Int64(segment) });
    }

    private static Tensor Segment(TokenBatch batch) =>
        batch.Labels.TryGetValue(SegmentFeature, out var s)
            ? s
            : throw new ArgumentException($"the batch has no '{SegmentFeature}' labels (labels: {string.Join(", ", batch.Labels.Keys)}); sample it from an InductionTask");

    /// <summary>
    /// The predictions only induction can make, [batch, pos − 1] ([instance, batch, pos − 1] for a stacked batch): position p counts when tokens p and p + 1
    /// are both in the repeat (r_2..r_L of the second copy, predicted from r_1..r_{L−1}).
    /// </summary>
    public static Tensor RepeatMask(TokenBatch batch)
    {
        var repeat = Segment(batch).eq(SegmentRepeat);   // [.., batch, pos]
        long n = repeat.shape[^1];
        return repeat.narrow(-1, 0, n - 1).logical_and(repeat.narrow(-1, 1, n - 1));
    }

    /// <summary>
    /// For each query position in the repeat, the key an induction head attends to: the position after the
    /// query token's earlier copy, q − L + 1, moved on by <paramref name="shift"/> (a shifted induction head
    /// keys on what a look-back-(shift + 1) head wrote). [batch, pos], −1 where the query is not in the repeat.
    /// </summary>
    public static Tensor InductionKeys(TokenBatch batch, int shift = 0)
    {
        if (shift < 0) throw new ArgumentOutOfRangeException(nameof(shift), shift, $"shift must be ≥ 0, got {shift}");
        var repeat = Segment(batch).eq(SegmentRepeat);                  // [.., batch, pos]
        var length = repeat.sum([-1], keepdim: true, type: ScalarType.Int64);  // [.., batch, 1]: L per sequence
        var position = arange(repeat.shape[^1], dtype: ScalarType.Int64);      // [pos]
        var key = position - length + 1 + shift;
        return where(repeat.logical_and(key.le(position)), key, full_like(key, -1L));
    }

    /// <summary>
    /// The same sequences with the segment's first copy redrawn: the repeat no longer matches anything
    /// earlier, so induction cannot predict it (the corrupted run of activation patching).
    /// </summary>
    public Tensor CorruptFirstCopy(TokenBatch batch, Generator generator)
    {
        var first = Segment(batch).eq(SegmentFirst);
        var fresh = randint(1, VocabSize, batch.Tokens.shape, dtype: ScalarType.Int64, generator: generator);
        return where(first, fresh, batch.Tokens);
    }
}
