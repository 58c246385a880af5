using MechInterp.Runtime;
using static TorchSharp.torch;

namespace MechInterp.Tests;

public class RuntimeTests
{
    [Fact]
    public void MatmulRunsThroughTorchSharp()
    {
        using var a = tensor(new float[] { 1, 2, 3, 4 }, 2, 2);   // [2, 2]
        using var b = tensor(new float[] { 5, 6, 7, 8 }, 2, 2);   // [2, 2]
        using var c = a.matmul(b);
        Assert.Equal(new float[] { 19, 22, 43, 50 }, c.data<float>().ToArray());
    }

    [Fact]
    public void EnsureLoadedIsIdempotentAndThreadSafe()
    {
        Parallel.For(0, 8, _ => TorchRuntime.EnsureLoaded());
        Assert.True(TorchRuntime.IsLoaded);
        Assert.NotNull(TorchRuntime.LoadedFrom);
    }

    [Fact]
    public void AThreadCountTheKernelsWouldRefuseChangesNothing()
    {
        // 5000 used to reach libtorch and the setting before the native library refused it.
        int before = Settings.Threads, torchBefore = get_num_threads();
        bool chosen = Settings.ThreadsChosen;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Settings.Threads = 5000);
        Assert.Contains("Threads must be in [1, 4096], got 5000", e.Message);
        Assert.Equal(before, Settings.Threads);
        Assert.Equal(torchBefore, get_num_threads());
        Assert.Equal(chosen, Settings.ThreadsChosen);
        if (Native.NativeKernels.IsAvailable) Assert.Equal(before, Native.NativeMethods.mi_get_num_threads());
    }

    [Fact]
    public void ThreadSettingReachesLibtorch()
    {
        Assert.Equal(1, Settings.WithThreads(1, () => get_num_threads()));
        Assert.Throws<ArgumentOutOfRangeException>(() => Settings.Threads = 0);
    }

    [Fact]
    public void OnTheDefaultSettingASmallTrainingStepRunsOnOneThreadAndAChosenSettingIsKept()
    {
        // The quick induction model: 41k parameters × 32 sequences of 33 tokens, below the threshold.
        double small = 41_000.0 * 32 * 33, large = 5 * small;
        Assert.Equal(1, Settings.ThreadsForStep(small, chosen: false, count: 2));
        Assert.Equal(2, Settings.ThreadsForStep(large, chosen: false, count: 2));
        Assert.Equal(2, Settings.ThreadsForStep(small, chosen: true, count: 2));
        Assert.Equal(1, Settings.ThreadsForStep(large, chosen: true, count: 1));
    }

    [Fact]
    public void WithThreadsRestoresTheSettingAlsoOnThrow()
    {
        int before = Settings.Threads;
        Assert.Equal(1, Settings.WithThreads(1, () => get_num_threads()));
        Assert.Equal(before, Settings.Threads);
        Assert.Throws<InvalidOperationException>(() => Settings.WithThreads<int>(1, () => throw new InvalidOperationException()));
        Assert.Equal(before, Settings.Threads);
        Assert.Equal(before, get_num_threads());
    }
}
