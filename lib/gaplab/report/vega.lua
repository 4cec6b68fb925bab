-- Every page loads the Vega bundle and the chart style that gaplab.report.site writes into
-- build/vega (charts draw with no internet). As an HTML dependency Quarto copies the files once
-- into site_libs and links them from each page by its own relative path; inlined into every
-- page's head, the bundle's "<table" strings set off Quarto's raw-HTML table parser.
function Meta(meta)
  local dir = pandoc.path.join({quarto.project.directory, "build", "vega"})
  quarto.doc.add_html_dependency({
    name = "gaplab-vega",
    version = "1",
    scripts = {pandoc.path.join({dir, "vega.js"})},
    stylesheets = {pandoc.path.join({dir, "gaplab.css"})},
  })
end
