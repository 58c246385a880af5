using MechInterp.Data;

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
    public void InductionSequencesRepeatTheirFirstHalf()
    {
        var task = new InductionTask(20, 5);
        using var batch = task.Sample(3, new Random(1));
        var t = batch.Tokens;
        Assert.True(t[.., 1..6].equal(t[.., 6..11]).all().item<bool>());
        Assert.Equal(0L, t[.., 0].max().item<long>());
        Assert.Equal(3L * 4, task.RepeatedHalfMask(3).sum().item<long>());
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
