// The one entry point. Usage: dotnet fsi build.fsx [target] [--full]
//   (default)  native + build + experiments at quick scale + report (the main job)
//   build      native library and dotnet build -c Release
//   native     CMake configure and build of native/
//   test       ctest, dotnet test, pack and the package consumer check; ends with one line "N passed, N failed"
//   pack       the NuGet packages MechInterp.Core and MechInterp.Analysis (+ symbols) in artifacts/packages (--version V)
//   bench      the benchmark program: ratios against libtorch, artifacts/bench/bench.json
//   sanitize   native/ built with ASan + UBSan (clang-14) and its GoogleTests run: any report fails
//   fuzz       the libFuzzer target for the native ABI and the safetensors fuzzer, 60 s each (--seconds N): 0 crashes
//   rss        the resident-set check of a long run (the --full phase diagram, about 2 minutes)
//   clean      removes build/, artifacts/ and every bin/ and obj/
#r "nuget: CliWrap, 3.10.5"

open System
open System.IO
open System.Text.RegularExpressions
open CliWrap

let root = __SOURCE_DIRECTORY__
let nativeBuild = Path.Combine(root, "build", "native")
let args = fsi.CommandLineArgs |> Array.skip 1
let target = args |> Array.tryFind (fun a -> not (a.StartsWith "--")) |> Option.defaultValue "main"
let full = args |> Array.contains "--full"

exception BuildFailed of string

let fail message = raise (BuildFailed message)

let stamp () = DateTime.Now.ToString "HH:mm:ss"
let step title = printfn "\n[%s] ==> %s" (stamp ()) title

/// Runs a command, streaming its output, returning (exit code, all output lines).
let run (exe: string) (arguments: string list) (workDir: string) (env: (string * string) list) =
    let lines = Collections.Generic.List<string>()
    let sink (line: string) =
        lock lines (fun () -> lines.Add line)
        printfn "%s" line
    let cmd =
        Cli.Wrap(exe)
            .WithArguments(arguments)
            .WithWorkingDirectory(workDir)
            .WithEnvironmentVariables(readOnlyDict [ for k, v in env -> k, v ])
            .WithStandardOutputPipe(PipeTarget.ToDelegate(sink))
            .WithStandardErrorPipe(PipeTarget.ToDelegate(sink))
            .WithValidation(CommandResultValidation.None)
    let result = cmd.ExecuteAsync().Task.GetAwaiter().GetResult()
    result.ExitCode, List.ofSeq lines

let runOrFail exe arguments workDir =
    let code, _ = run exe arguments workDir []
    if code <> 0 then fail $"`{exe} {String.Join(' ', arguments)}` exited with {code}"

let onPath (exe: string) =
    (Environment.GetEnvironmentVariable "PATH").Split(':')
    |> Array.exists (fun dir -> File.Exists(Path.Combine(dir, exe)))

/// A prerequisite is installed from Debian when we are root, else named with the package to install.
let require (what: string) (isPresent: unit -> bool) (debianPackage: string) =
    if not (isPresent ()) then
        let isRoot = Environment.UserName = "root"
        if isRoot && onPath "apt-get" then
            printfn "%s is missing: installing Debian package %s" what debianPackage
            run "apt-get" [ "update"; "-q" ] root [] |> ignore
            let code, _ = run "apt-get" [ "install"; "-y"; "-q"; debianPackage ] root [ "DEBIAN_FRONTEND", "noninteractive" ]
            if code <> 0 || not (isPresent ()) then
                fail $"{what} is missing and `apt-get install {debianPackage}` did not provide it."
        else
            fail $"{what} is missing. Install it with: sudo apt-get install {debianPackage}"

let checkPrerequisites () =
    require "cmake" (fun () -> onPath "cmake") "cmake"
    require "a C++ compiler (g++)" (fun () -> onPath "g++" || onPath "c++") "g++"
    require "GoogleTest (CMake package GTest)" (fun () ->
        File.Exists "/usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake"
        || File.Exists "/usr/lib/cmake/GTest/GTestConfig.cmake"
        || File.Exists "/usr/lib/x86_64-linux-gnu/libgtest.a") "libgtest-dev"

let buildNative () =
    step "native: CMake configure and build (Release)"
    checkPrerequisites ()
    // CUDA: CMake reads CUDAHOSTCXX from the environment we pass through (nvcc 11.8 needs clang++-14 beside g++ 12);
    // MI_REQUIRE_CUDA=ON (as CI sets it) turns a missing CUDA compiler into a configure error.
    let requireCuda =
        match Environment.GetEnvironmentVariable "MI_REQUIRE_CUDA" with
        | null | "" -> []
        | v -> [ $"-DMI_REQUIRE_CUDA={v}" ]
    runOrFail "cmake" ([ "-S"; root; "-B"; nativeBuild; "-DCMAKE_BUILD_TYPE=Release" ] @ requireCuda) root
    runOrFail "cmake" [ "--build"; nativeBuild; "-j"; string Environment.ProcessorCount ] root

let buildDotnet () =
    step "dotnet build -c Release"
    runOrFail "dotnet" [ "build"; Path.Combine(root, "MechInterp.sln"); "-c"; "Release"; "-nologo"; "-v"; "minimal" ] root

let buildAll () =
    buildNative ()
    buildDotnet ()

/// ctest's "N% tests passed, F tests failed out of T".
/// Skipped tests (a CUDA test on a machine without a device) count as neither passed nor failed.
let parseCtest (lines: string list) =
    let skipped = lines |> List.filter (fun l -> l.Contains "(Skipped)") |> List.length
    lines
    |> List.tryPick (fun l ->
        let m = Regex.Match(l, @"tests passed, (\d+) tests? failed out of (\d+)")
        if m.Success then
            let failed = int m.Groups.[1].Value
            Some(int m.Groups.[2].Value - failed - skipped, failed)
        else None)

/// dotnet test's per-assembly "Passed!  - Failed:     0, Passed:    13, Skipped: ..." lines, summed.
let parseDotnetTest (lines: string list) =
    lines
    |> List.choose (fun l ->
        let m = Regex.Match(l, @"Failed:\s+(\d+), Passed:\s+(\d+), Skipped:\s+(\d+)")
        if m.Success then Some(int m.Groups.[2].Value, int m.Groups.[1].Value) else None)
    |> List.fold (fun (p, f) (p', f') -> p + p', f + f') (0, 0)

let packageProjects = [ Path.Combine(root, "src", "Core.CSharp"); Path.Combine(root, "src", "Analysis.FSharp") ]

/// Packs both packages (after buildAll) into `outDir`, replacing earlier MechInterp packages there; returns the
/// .nupkg files. The version is Package.props' VersionPrefix unless given.
let packTo (outDir: string) (version: string option) =
    Directory.CreateDirectory outDir |> ignore
    for old in Directory.GetFiles(outDir, "MechInterp.*nupkg") do File.Delete old
    for project in packageProjects do
        let versionArg = match version with Some v -> [ $"-p:PackageVersion={v}" ] | None -> []
        runOrFail "dotnet" ([ "pack"; project; "-c"; "Release"; "--no-build"; "-nologo"; "-v"; "minimal"; "-o"; outDir ] @ versionArg) root
    let packages = Directory.GetFiles(outDir, "MechInterp.*.nupkg") |> Array.sort
    for p in Array.append packages (Directory.GetFiles(outDir, "MechInterp.*.snupkg") |> Array.sort) do
        printfn "  %s: %d bytes" (Path.GetFileName p) (FileInfo(p).Length)
    packages

/// What a package must hold: the native library for linux-x64 in Core, a README and the LICENSE in both.
let checkPackages (packages: string[]) =
    let entries (p: string) =
        use zip = Compression.ZipFile.OpenRead p
        zip.Entries |> Seq.map (fun e -> e.FullName) |> Set.ofSeq
    let problems =
        [ if packages.Length <> 2 then yield $"expected 2 packages, found {packages.Length}"
          for p in packages do
              let names = entries p
              for needed in [ "README.md"; "LICENSE" ] do
                  if not (names.Contains needed) then yield $"{Path.GetFileName p} has no {needed}"
              if Path.GetFileName(p).StartsWith "MechInterp.Core." && not (names.Contains "runtimes/linux-x64/native/libmechinterp_native.so") then
                  yield $"{Path.GetFileName p} lacks runtimes/linux-x64/native/libmechinterp_native.so" ]
    for problem in problems do eprintfn "pack: %s" problem
    problems.IsEmpty

let pack () =
    buildAll ()
    step "pack: MechInterp.Core and MechInterp.Analysis"
    let version = args |> Array.tryFindIndex ((=) "--version") |> Option.bind (fun i -> Array.tryItem (i + 1) args)
    let packages = packTo (Path.Combine(root, "artifacts", "packages")) version
    if not (checkPackages packages) then fail "the packages are incomplete"

/// Packs with a version no cache has seen into a fresh feed, then has a fresh C# project and F# script outside the
/// repository use it (tests/Package/consumer_check.fsx). Returns (passed, failed): pack, consumer C#, consumer F#.
let packageCheck () =
    step "pack and the package consumer check"
    let feed = Path.Combine(Path.GetTempPath(), $"mechinterp-feed-{Guid.NewGuid():N}")
    let version = $"""0.1.0-check.{DateTime.UtcNow.ToString "yyyyMMddHHmmss"}"""
    try
        let packed =
            try checkPackages (packTo feed (Some version))
            with BuildFailed message -> eprintfn "pack: %s" message; false
        printfn "pack: %s" (if packed then "passed" else "failed")
        if not packed then 0, 3
        else
            let _, lines = run "dotnet" [ "fsi"; Path.Combine(root, "tests", "Package", "consumer_check.fsx"); "--feed"; feed; "--version"; version ] root []
            let passed = [ "C#"; "F#" ] |> List.filter (fun name -> lines |> List.contains $"consumer {name}: passed") |> List.length
            1 + passed, 2 - passed
    finally
        if Directory.Exists feed then Directory.Delete(feed, true)

let test () =
    buildAll ()
    step "ctest"
    let ctestCode, ctestLines = run "ctest" [ "--test-dir"; nativeBuild; "--output-on-failure" ] root []
    let ctestPassed, ctestFailed =
        match parseCtest ctestLines with
        | Some counts -> counts
        | None -> 0, (if ctestCode <> 0 then 1 else 0)
    step "dotnet test"
    let testCode, testLines =
        run "dotnet" [ "test"; Path.Combine(root, "MechInterp.sln"); "-c"; "Release"; "--no-build"; "-nologo" ] root []
    let dnPassed, dnFailed = parseDotnetTest testLines
    // A crashed test host prints no summary: count it as a failure rather than as nothing.
    let dnFailed = if testCode <> 0 && dnFailed = 0 then dnFailed + 1 else dnFailed
    let pkgPassed, pkgFailed = packageCheck ()
    printfn ""
    printfn "ctest: %d passed, %d failed" ctestPassed ctestFailed
    printfn "dotnet test: %d passed, %d failed" dnPassed dnFailed
    printfn "packages (pack, consumer C#, consumer F#): %d passed, %d failed" pkgPassed pkgFailed
    let passed, failed = ctestPassed + dnPassed + pkgPassed, ctestFailed + dnFailed + pkgFailed
    printfn "%d passed, %d failed" passed failed
    if failed > 0 || ctestCode <> 0 || testCode <> 0 then exit 1

let experiments () =
    step (sprintf "experiments (%s scale) and report" (if full then "full" else "quick"))
    let scale = if full then "--full" else "--quick"
    // Two runner processes at once, shares balanced by cost: most units are too small for intra-op threads, so on
    // two cores two one-thread processes finish sooner than one on two threads (README: Running on a cluster).
    let jobs = string (min 2 Environment.ProcessorCount)
    runOrFail "dotnet" [ "run"; "--project"; Path.Combine(root, "src", "Experiments"); "-c"; "Release"; "--no-build"; "--"; scale; "--jobs"; jobs ] root

let bench () =
    buildAll ()
    step "bench"
    // libtorch's libgomp spin-waits after each parallel region; on a shared, oversubscribed machine the
    // spinning threads eat the time slices the work needs and timings swing tenfold for ours and the
    // baselines alike. Passive waiting keeps the comparison meaningful; set OMP_WAIT_POLICY to override.
    let waitPolicy =
        match Environment.GetEnvironmentVariable "OMP_WAIT_POLICY" with
        | null | "" -> [ "OMP_WAIT_POLICY", "PASSIVE" ]
        | _ -> []
    let code, _ = run "dotnet" [ "run"; "--project"; Path.Combine(root, "bench"); "-c"; "Release"; "--no-build" ] root waitPolicy
    if code <> 0 then fail $"the benchmark exited with {code}"

let fuzzBuild = Path.Combine(root, "build", "fuzz")

/// clang-14 and the sanitizer and libFuzzer runtimes (Debian's libclang-rt-14-dev).
let checkClang () =
    require "clang++-14" (fun () -> onPath "clang++-14") "clang-14"
    require "the clang-14 sanitizer and libFuzzer runtimes" (fun () ->
        Directory.Exists "/usr/lib/llvm-14/lib/clang"
        && Directory.EnumerateFiles("/usr/lib/llvm-14/lib/clang", "libclang_rt.fuzzer*-x86_64.a", SearchOption.AllDirectories) |> Seq.isEmpty |> not) "libclang-rt-14-dev"

/// One CPU-only ASan + UBSan build serves both: the GoogleTests and the libFuzzer target.
let buildSanitized () =
    step "native: ASan + UBSan build with clang-14 (build/fuzz)"
    checkPrerequisites ()
    checkClang ()
    runOrFail "cmake" [ "-S"; root; "-B"; fuzzBuild; "-DCMAKE_BUILD_TYPE=RelWithDebInfo"; "-DCMAKE_C_COMPILER=clang-14"
                        "-DCMAKE_CXX_COMPILER=clang++-14"; "-DMI_SANITIZE=ON"; "-DMI_BUILD_FUZZERS=ON"; "-DMI_NATIVE_ARCH=OFF" ] root
    runOrFail "cmake" [ "--build"; fuzzBuild; "-j"; string Environment.ProcessorCount ] root

let sanitize () =
    buildSanitized ()
    step "ctest under ASan + UBSan"
    // halt_on_error: the first report fails its test; detect_leaks: leaks are reports too.
    let env = [ "ASAN_OPTIONS", "halt_on_error=1:detect_leaks=1"; "UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1" ]
    let code, lines = run "ctest" [ "--test-dir"; fuzzBuild; "--output-on-failure" ] root env
    match parseCtest lines with
    | Some(passed, failed) -> printfn "sanitized ctest: %d passed, %d failed" passed failed
    | None -> ()
    if code <> 0 then fail "the ASan + UBSan GoogleTests failed"

let fuzzSeconds =
    match args |> Array.tryFindIndex ((=) "--seconds") with
    | Some i when i + 1 < args.Length -> int args.[i + 1]
    | _ -> 60

let fuzz () =
    buildAll ()
    buildSanitized ()
    step $"libFuzzer: the native ABI for {fuzzSeconds} s"
    let corpus = Path.Combine(root, "build", "fuzz", "abi-corpus")
    Directory.CreateDirectory corpus |> ignore
    let crashes = Path.Combine(root, "artifacts", "fuzz", "abi-crashes") + "/"
    Directory.CreateDirectory crashes |> ignore
    // A fixed seed: a CI failure replays. -timeout: one input over 10 s is a hang, reported as a crash.
    let code, _ =
        run (Path.Combine(fuzzBuild, "native", "mechinterp_abi_fuzz"))
            [ $"-max_total_time={fuzzSeconds}"; "-seed=1"; "-max_len=4096"; "-timeout=10"; "-rss_limit_mb=4096"
              "-print_final_stats=1"; $"-artifact_prefix={crashes}"; corpus ] root [ "ASAN_OPTIONS", "detect_leaks=1" ]
    if code <> 0 then fail $"the ABI fuzzer found a crash (exit {code}); the input is in {crashes}"
    step $"safetensors fuzzer for {fuzzSeconds} s"
    let code, _ =
        run "dotnet" [ "fsi"; Path.Combine(root, "tests", "Fuzz", "safetensors_fuzz.fsx"); "--seconds"; string fuzzSeconds; "--seed"; "17" ] root []
    if code <> 0 then fail $"the safetensors fuzzer found a crash or a hang (exit {code}); inputs in artifacts/fuzz/safetensors-crashes"

let rss () =
    buildAll ()
    step "rss: the resident set of a long run"
    let code, _ = run "dotnet" [ "fsi"; Path.Combine(root, "tests", "Memory", "rss_check.fsx") ] root []
    if code <> 0 then fail "the resident set of the phase-diagram training grows (tests/Memory/rss_check.fsx)"

let clean () =
    step "clean"
    for dir in [ Path.Combine(root, "build"); Path.Combine(root, "artifacts") ] do
        if Directory.Exists dir then Directory.Delete(dir, true)
    for pattern in [ "bin"; "obj" ] do
        for dir in Directory.GetDirectories(root, pattern, SearchOption.AllDirectories) do
            if Directory.Exists dir then Directory.Delete(dir, true)

let started = DateTime.Now
try
    match target with
    | "main" ->
        buildAll ()
        experiments ()
    | "build" -> buildAll ()
    | "native" -> buildNative ()
    | "test" -> test ()
    | "pack" -> pack ()
    | "bench" -> bench ()
    | "sanitize" -> sanitize ()
    | "fuzz" -> fuzz ()
    | "rss" -> rss ()
    | "clean" -> clean ()
    | other -> fail $"unknown target '{other}'; targets: (none), build, native, test, pack, bench, sanitize, fuzz, rss, clean"
    printfn "\n[%s] done in %.0f s" (stamp ()) (DateTime.Now - started).TotalSeconds
with BuildFailed message ->
    eprintfn "\nbuild.fsx: %s" message
    exit 1
