/// The expert study as an entry of the main job: artifacts/results/moe.json and the report section.
/// One unit: every seed's MoE and hash-router models train as one batched model.
module MechInterp.Analysis.Experts.MoeExperiment

open MechInterp.Analysis.Report

let experiment: Experiment =
    Experiment.single "moe" "toy mixture of experts: do experts specialize on the toy language's ground-truth features?" (fun scale ->
        let setup, toy =
            match scale with
            | Quick -> MoeStudy.quickSetup, MoeStudy.quickToy
            | Full -> MoeStudy.fullSetup, MoeStudy.fullToy
        let checkpoint = System.IO.Path.Combine("artifacts", "checkpoints", "moe.safetensors")
        let study = MoeStudy.run (fun line -> System.Console.Out.WriteLine line; System.Console.Out.Flush()) setup toy (Some checkpoint)
        { Answer = MoeSection.answer study
          Sections = [ MoeSection.section study ]
          Results = MoeStudy.toJson study })
