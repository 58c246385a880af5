/// The expert study as an entry of the main job: artifacts/results/moe.json and the report section.
module MechInterp.Analysis.Experts.MoeExperiment

open MechInterp.Analysis.Report

let experiment: Experiment =
    { Name = "moe"
      Description = "toy mixture of experts: do experts specialize on the toy language's ground-truth features?"
      Run =
        fun scale ->
            let setup, toy =
                match scale with
                | Quick -> MoeStudy.quickSetup, MoeStudy.quickToy
                | Full -> MoeStudy.fullSetup, MoeStudy.fullToy
            let study = MoeStudy.run (printfn "%s") setup toy
            { Sections = [ MoeSection.section study ]
              Results = MoeStudy.toJson study } }
