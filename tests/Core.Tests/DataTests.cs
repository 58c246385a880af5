using MechInterp.Data;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public class DataTests
{
    [Fact]
    public void TasksAreDeterministicFromTheSeed()
    {
        ITokenTask[] tasks = [new InductionTask(20, 5), new ModularAddition(), new ToyLanguage(24)];
        foreach (var task in tasks)
        {
            using var a = task.Sample(4, new Random(3));
            using var b = task.Sample(4, new Random(3));
            using var c = task.Sample(4, new Random(4));
            Assert.True(a.Tokens.equal(b.Tokens).all().item<bool>(), task.Name);
            Assert.False(a.Tokens.equal(c.Tokens).all().item<bool>(), task.Name);
            Assert.Equal(new long[] { 4, task.SequenceLength }, a.Tokens.shape);
            Assert.True(a.Tokens.max().item<long>() < task.VocabSize);
        }
    }

    [Fact]
    public void InductionSequencesRepeatASegmentOfVaryingLengthAndOffset()
    {
        var task = new InductionTask(vocabSize: 50, maxRepeat: 8, minRepeat: 3);
        using var scope = NewDisposeScope();
        using var batch = task.Sample(64, new Random(1));
        long n = task.SequenceLength;
        long[] tokens = batch.Tokens.data<long>().ToArray();
        long[] segment = batch.Labels[InductionTask.SegmentFeature].data<long>().ToArray();
        long[] keys = InductionTask.InductionKeys(batch).data<long>().ToArray();
        bool[] mask = InductionTask.RepeatMask(batch).data<bool>().ToArray();
        var lengths = new HashSet<long>();
        var starts = new HashSet<long>();
        for (int b = 0; b < 64; b++)
        {
            long Seg(long p) => segment[b * n + p];
            Assert.Equal(InductionTask.Bos, tokens[b * n]);
            long length = Enumerable.Range(0, (int)n).Count(p => Seg(p) == InductionTask.SegmentRepeat);
            Assert.Equal(length, Enumerable.Range(0, (int)n).Count(p => Seg(p) == InductionTask.SegmentFirst));
            Assert.InRange(length, 3, 8);
            lengths.Add(length);
            starts.Add(Enumerable.Range(0, (int)n).First(p => Seg(p) == InductionTask.SegmentFirst));
            for (long p = 1; p < n; p++)
            {
                long k = keys[b * n + p];
                if (Seg(p) == InductionTask.SegmentRepeat)
                {
                    // the key follows the query token's earlier copy
                    Assert.Equal(tokens[b * n + p], tokens[b * n + p - length]);
                    Assert.Equal(p - length + 1, k);
                    Assert.Equal(InductionTask.SegmentFirst, Seg(p - length));
                }
                else Assert.Equal(-1L, k);
                if (p < n - 1)
                    Assert.Equal(Seg(p) == InductionTask.SegmentRepeat && Seg(p + 1) == InductionTask.SegmentRepeat, mask[b * (n - 1) + p]);
            }
        }
        // a shifted key moves on by the shift, and is dropped where it would pass the query
        long[] shifted = InductionTask.InductionKeys(batch, 2).data<long>().ToArray();
        for (int i = 0; i < keys.Length; i++)
            Assert.Equal(keys[i] >= 0 && keys[i] + 2 <= i % n ? keys[i] + 2 : -1L, shifted[i]);
        Assert.True(lengths.Count >= 5 && starts.Count >= 5, $"{lengths.Count} lengths and {starts.Count} start positions in 64 sequences");

        // the corrupted run redraws exactly the first copy
        using var gen = new Generator(7);
        long[] corrupted = task.CorruptFirstCopy(batch, gen).data<long>().ToArray();
        int changedOutside = Enumerable.Range(0, tokens.Length).Count(i => segment[i] != InductionTask.SegmentFirst && corrupted[i] != tokens[i]);
        int changedInside = Enumerable.Range(0, tokens.Length).Count(i => segment[i] == InductionTask.SegmentFirst && corrupted[i] != tokens[i]);
        Assert.Equal(0, changedOutside);
        Assert.True(changedInside > segment.Count(s => s == InductionTask.SegmentFirst) * 9 / 10, $"{changedInside} first-copy tokens redrawn");
    }

    [Fact]
    public void AFixedLengthInductionTaskIsBosThenTwoCopies()
    {
        var task = new InductionTask(20, 5, minRepeat: 5);
        using var batch = task.Sample(3, new Random(1));
        var t = batch.Tokens;
        Assert.True(t[.., 1..6].equal(t[.., 6..11]).all().item<bool>());
        Assert.Equal(3L * 4, InductionTask.RepeatMask(batch).sum().item<long>());
        Assert.Equal(4, new InductionTask(20, 8).MinRepeat);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new InductionTask(20, 5, minRepeat: 6));
        Assert.Contains("minRepeat must be in [1, maxRepeat = 5], got 6", e.Message);
        var missing = Assert.Throws<ArgumentException>(() => InductionTask.RepeatMask(new ModularAddition().Sample(2, new Random(0))));
        Assert.Contains("no 'segment' labels", missing.Message);
    }

    [Fact]
    public void ModularAdditionAnswersAreSums()
    {
        var task = new ModularAddition(p: 7, trainFraction: 0.5, splitSeed: 2);
        using var all = task.All();
        var t = all.Tokens;
        Assert.True(t[.., 0].add(t[.., 1]).remainder(7).equal(t[.., 3]).all().item<bool>());
        Assert.Equal(24, task.TrainSize);   // 0.5 * 49 = 24.5, rounded half to even
        Assert.Throws<ArgumentOutOfRangeException>(() => new ModularAddition(trainFraction: 1.5));
    }

    [Fact]
    public void ToyLanguageLabelsFollowItsRules()
    {
        var lang = new ToyLanguage(48);
        using var batch = lang.Sample(16, new Random(5));
        long[] tokens = batch.Tokens.data<long>().ToArray();
        long[] cls = batch.Labels["token_class"].data<long>().ToArray();
        long[] number = batch.Labels["number"].data<long>().ToArray();
        long[] rule = batch.Labels["next_rule"].data<long>().ToArray();
        long[] inside = batch.Labels["inside_brackets"].data<long>().ToArray();
        int agreements = 0, countings = 0;
        for (int b = 0; b < 16; b++)
            for (int p = 0; p < 47; p++)
            {
                int i = b * 48 + p;
                Assert.Equal(ToyLanguage.TokenClasses[cls[i]] == "digit" ? 1 : 0, inside[i]);
                if (rule[i] == 1)   // agreement: the next token is a verb of the subject's number
                {
                    Assert.Equal("verb", ToyLanguage.TokenClasses[cls[i + 1]]);
                    Assert.Equal(number[i], number[i + 1]);
                    agreements++;
                }
                if (rule[i] == 2 && cls[i + 1] == 4)   // counting: the next digit is one more, mod 10
                {
                    Assert.Equal((tokens[i] - ToyLanguage.FirstDigit + 1) % 10, tokens[i + 1] - ToyLanguage.FirstDigit);
                    countings++;
                }
            }
        Assert.True(agreements > 10 && countings > 10, $"{agreements} agreements, {countings} countings");
        Assert.Equal("N3p", ToyLanguage.TokenName(ToyLanguage.FirstNoun + 9));
    }
}
