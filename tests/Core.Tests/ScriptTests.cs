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

    internal static (int Code, string Output) RunFsi(string script, TimeSpan timeout)
    {
        var info = new ProcessStartInfo("dotnet", ["fsi", "--quiet", script])
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
}
