using System.Diagnostics;

namespace MechInterp.Tests;

/// <summary>The F# Interactive path a researcher uses: scripts/ load libtorch through the same runtime.</summary>
public class ScriptTests
{
    internal static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "MechInterp.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no MechInterp.sln above {AppContext.BaseDirectory}");
    }

    internal static (int Code, string Output) RunFsi(string script, TimeSpan timeout, params string[] arguments)
    {
        var info = new ProcessStartInfo("dotnet", ["fsi", "--quiet", script, .. arguments])
        {
            WorkingDirectory = RepoRoot(),
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet fsi {script} ran past {timeout}");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void SmokeScriptRunsAMatmulInFsi()
    {
        var (code, output) = RunFsi("scripts/smoke.fsx", TimeSpan.FromMinutes(3));
        Assert.True(code == 0, $"scripts/smoke.fsx exited with {code} (build Release first):\n{output}");
        Assert.Contains("matmul: [|7.0f; 10.0f; 15.0f; 22.0f|]", output);
        Assert.Contains("native kernels: true", output);
    }

    [Fact]
    public void ScriptArgumentsParseSeedsAndListsAndRejectBadNumbers()
    {
        const string script = "tests/Core.Tests/Scripts/arguments.fsx";
        var (code, output) = RunFsi(script, TimeSpan.FromMinutes(3), "--first-seed", "8", "--seeds", "3", "--depths", "2,4", "--tasks", "induction,toy_language");
        Assert.True(code == 0, $"{script} exited with {code}:\n{output}");
        Assert.Contains("seeds: [8; 9; 10]", output);
        Assert.Contains("depths: Some [2; 4]", output);
        Assert.Contains("steps: None", output);
        Assert.Contains("tasks: Some [\"induction\"; \"toy_language\"]", output);

        // --first-seed alone shifts the default count of seeds; a bad number or a missing value names the flag.
        (code, output) = RunFsi(script, TimeSpan.FromMinutes(3), "--first-seed", "8");
        Assert.True(code == 0, output);
        Assert.Contains("seeds: [8; 9; 10; 11; 12; 13; 14; 15]", output);
        (code, output) = RunFsi(script, TimeSpan.FromMinutes(3), "--seeds", "five");
        Assert.NotEqual(0, code);
        Assert.Contains("--seeds five: expected a whole number", output);
        (code, output) = RunFsi(script, TimeSpan.FromMinutes(3), "--steps");
        Assert.NotEqual(0, code);
        Assert.Contains("--steps needs a value", output);
    }
}
