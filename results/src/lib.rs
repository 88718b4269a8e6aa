//! Result schema and writers: manifest, cell records, histograms, CSV summary.
