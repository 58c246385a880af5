using MechInterp.Native;

namespace MechInterp.Tests;

/// <summary>Where the native library is looked for: a consumer's output and the NuGet cache as well as this repo's build.</summary>
public class NativeResolverTests
{
    private static readonly string Native = Path.Combine("runtimes", "linux-x64", "native", "libmechinterp_native.so");

    [Fact]
    public void CandidatesIncludeTheConsumersRuntimesFolderAndTheRepoBuild()
    {
        var candidates = NativeLibraryResolver.Candidates().ToList();
        Assert.Contains(Path.Combine(AppContext.BaseDirectory, Native), candidates);
        Assert.Contains(candidates, c => c.EndsWith(Path.Combine("build", "native", "lib", "libmechinterp_native.so")));
        // The package layout in the NuGet cache: lib/net10.0/MechInterp.Core.dll beside runtimes/linux-x64/native/.
        string here = Path.GetDirectoryName(typeof(NativeKernels).Assembly.Location)!;
        Assert.Contains(Path.GetFullPath(Path.Combine(here, "..", "..", Native)), candidates);
    }

    [Fact]
    public void TheLoadedLibraryIsNamed()
    {
        Assert.True(NativeKernels.IsAvailable, NativeKernels.UnavailableReason);
        Assert.NotNull(NativeKernels.LoadedFrom);
        Assert.True(File.Exists(NativeKernels.LoadedFrom));
    }
}
